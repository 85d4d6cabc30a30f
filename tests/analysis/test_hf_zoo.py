"""Issue 13 zoo: roles and width dims on 13 Hugging Face architectures from small configs.

The oracle is independent of fxparam's analysis: each architecture's definition (which
parameters are token/position tables, which are read out: lm_head, MoE routers) and a
second build of the same architecture at twice the width (on meta), whose changed axes are
exactly the width axes.  Model builders live in ``_zoo.py`` (shared with the structure tests).
"""

import pytest
import torch

from tests.analysis._zoo import ZOO, analysis, build

pytest.importorskip("transformers")


def _expected_role(name, shape, expected):
    if name in expected["embeddings"]:
        return "embedding"
    if name in expected["readouts"] or any(name.endswith(s) for s in expected["readouts"] if s.startswith(".")):
        return "readout"
    if len(shape) >= 2:
        return "hidden"
    return "vector"


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_zoo_roles(arch):
    expected = ZOO[arch][3]
    a = analysis(arch)
    assert a.width == 64
    unclassified = [n for n in a.notes if "roles=" in n]
    assert not unclassified, unclassified  # no parameter left unclassified on these architectures
    for name, info in a.params.items():
        want = _expected_role(name, info.shape, expected)
        if info.tied_to:  # an alias of a table: embedding rules, or readout where it is read out
            assert info.role in ("embedding", "readout"), name
            continue
        if arch == "t5" and "relative_attention_bias" in name:
            assert info.role == "embedding", name  # a lookup table: positions -> heads
            continue
        assert info.role == want, (name, info.role, info.reason)
    for suffix in expected.get("experts", []):
        experts = [i for n, i in a.params.items() if n.endswith(suffix)]
        assert experts and all(i.role == "hidden" and 0 not in i.width_dims for i in experts)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_zoo_width_axes_are_the_axes_that_grow(arch):
    """Width axes of every matrix = the axes whose size changes when the config's width doubles."""
    a = analysis(arch)
    wide = dict(build(arch, 128, device="meta").named_parameters(remove_duplicate=False))
    for name, info in a.params.items():
        if len(info.shape) < 2:
            continue
        grows = [i for i, (s, t) in enumerate(zip(info.shape, wide[name].shape, strict=True)) if s != t]
        if arch == "t5" and "relative_attention_bias" in name:
            continue  # [buckets, heads]: heads grow in this zoo's scaling, a convention (see dims.py)
        assert info.width_dims == grows, (name, info.width_dims, grows, info.reason)


def test_zoo_covers_the_issue_kinds():
    kinds = {"moe": ["mixtral", "qwen3_moe"], "sandwich norms": ["gemma2", "gemma3"], "norm on branch": ["olmo2"],
             "parallel attn+mlp": ["gptj", "phi", "falcon"], "multi-query": ["falcon", "gpt_bigcode"],
             "encoder-decoder": ["t5"]}
    assert all(arch in ZOO for archs in kinds.values() for arch in archs)
    assert len(set(ZOO) - {"gpt2", "llama", "gpt_neox", "bert"}) >= 10


def test_zoo_models_run():
    """The small configs are real models: a forward on CPU gives finite logits."""
    from tests.analysis._zoo import example_inputs

    for arch in ("mixtral", "gemma2", "falcon"):
        out = build(arch)(**example_inputs(arch, seed=0))
        assert torch.isfinite(out.logits).all()
