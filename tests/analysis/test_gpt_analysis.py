"""Analysis of the reference GPT across its options, checked against ground truth."""

import itertools

import pytest
import torch

import fxparam
from fxparam.models import GPT, GPTConfig

# Every option value appears with every other option's values (a covering set of the
# 96-way product); each model has depth 3 so that block shortening is exercised.
_BASE = list(itertools.product(["learned", "rope", "alibi"], [False, True], [False, True]))
_ROT = list(itertools.product(["gelu", "swiglu"], ["layernorm", "rmsnorm"], [True, False]))
CASES = [
    dict(pos=pos, parallel_residual=par, tie_embeddings=tie, mlp=mlp, norm=norm, bias=bias)
    for i, (pos, par, tie) in enumerate(_BASE)
    for (mlp, norm, bias) in (_ROT[i % 8], _ROT[(i + 3) % 8])
]


def _id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_reference_gpt_structure(case):
    cfg = GPTConfig(width=64, depth=3, head_dim=16, vocab=97, seq_len=32, **case)
    model = GPT(cfg)
    a = fxparam.inspect(model)

    assert a.depth == 3
    assert a.blocks == ["blocks.0", "blocks.1", "blocks.2"]
    assert a.width == 64
    per_block = 1 if cfg.parallel_residual else 2
    assert len(a.residuals) == 3 * per_block
    for r in a.residuals:
        if cfg.parallel_residual:
            assert sorted(r.branches) == [f"{r.block}.attn", f"{r.block}.mlp"]
        else:
            assert r.branch in (f"{r.block}.attn", f"{r.block}.mlp")
        for m in r.output_modules:
            assert m in (f"{r.block}.attn.proj", f"{r.block}.mlp.proj")

    expected_roles = {}
    for name, _p in model.named_parameters(remove_duplicate=False):
        if name.startswith("wte") or name.startswith("wpe"):
            expected_roles[name] = "embedding"
        elif name == "lm_head.weight":
            expected_roles[name] = "readout"
        elif name.endswith(".weight") and (".attn." in name or ".mlp." in name):
            expected_roles[name] = "hidden"
        else:
            expected_roles[name] = "vector"
    assert {n: p.role for n, p in a.params.items()} == expected_roles

    if cfg.tie_embeddings:
        assert a.tied == [["wte.weight", "lm_head.weight"]]
        assert a.params["lm_head.weight"].tied_to == "wte.weight"
    else:
        assert a.tied == []
    assert len(a.attention) == 3
    for site in a.attention:
        assert site.head_dim == 16
        assert site.scale == pytest.approx(1 / 16**0.5)
        assert site.scale_attr == "scale"
    assert len(a.norms) == 7
    assert {n.kind for n in a.norms} == {cfg.norm}


@pytest.mark.parametrize("kw", [dict(), dict(mlp="swiglu", pos="rope", heads=4), dict(tie_embeddings=True)])
def test_width_flags_match_two_captures(kw):
    """The structural width flags equal the dims that actually change between two widths."""
    small = GPT(GPTConfig(width=64, depth=2, **({"head_dim": 16} if "heads" not in kw else {}), **kw))
    large = GPT(GPTConfig(width=128, depth=2, **({"head_dim": 16} if "heads" not in kw else {}), **kw))
    a = fxparam.inspect(small)
    shapes_large = dict(large.named_parameters(remove_duplicate=False))
    for name, p in small.named_parameters(remove_duplicate=False):
        info = a.params[name]
        grows = [s != t for s, t in zip(p.shape, shapes_large[name].shape, strict=True)]
        if info.fan_in_dim is not None:
            assert grows[info.fan_in_dim] == info.fan_in_width, name
            assert grows[1 - info.fan_in_dim] == info.fan_out_width, name
        else:
            assert grows == [info.fan_out_width], name


def test_analysis_json_round_trip():
    a = fxparam.inspect(GPT(GPTConfig(width=64, depth=2, tie_embeddings=True)))
    again = fxparam.Analysis.from_json(a.to_json())
    assert again == a
    assert "embedding" in str(a) and "readout" in str(a)


def test_inspect_does_not_mutate_model():
    model = GPT(GPTConfig(width=64, depth=3, tie_embeddings=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    modules_before = dict(model.named_modules())
    model.train()
    fxparam.inspect(model)
    assert model.training
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(before[k], after[k])
    for n, p in model.named_parameters(remove_duplicate=False):
        assert p is params_before[n]
        assert p.device.type == "cpu"
    for name, m in model.named_modules():
        assert m is modules_before[name]
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def test_capture_depth_independent_of_block_count():
    """Deep models are captured with two blocks and mapped back by name."""
    a = fxparam.inspect(GPT(GPTConfig(width=64, depth=12)))
    assert a.depth == 12 and len(a.residuals) == 24
    assert a.capture_method == "export"
    assert a.params["blocks.11.mlp.proj.weight"].role == "hidden"
    assert a.params["blocks.11.mlp.proj.weight"].block == "blocks.11"
