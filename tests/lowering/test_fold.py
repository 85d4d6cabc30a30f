"""fxparam.fold (issue 14, item 6): an ordinary model whose weights absorb the multipliers.

Reference: the transformed model's own outputs.  Negative control: the transformed model's
weights loaded unchanged into a plain model of the same class compute something else (the
multipliers are not in them), so equality after folding is not an accident.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.models.gpt import GPT, GPTConfig

KW = {"base_width": 16, "base_depth": 1, "base_head_dim": 8, "embedding_multiplier": 2.0, "output_multiplier": 1.5}


def _nanogpt() -> nn.Module:
    path = Path(__file__).resolve().parents[1] / "nanogpt_style.py"
    spec = importlib.util.spec_from_file_location("nanogpt_style_fold", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.make(32, 2)


def _plain_state(model: nn.Module) -> list[str]:
    """What makes a model not ordinary: fxparam classes, hooks, buffers, the plan."""
    bad = []
    for name, m in model.named_modules():
        if type(m).__module__.startswith("fxparam.lowering") or type(m).__module__.startswith("fxparam.kernels"):
            bad.append(f"{name}: {type(m).__name__}")
        if m._forward_hooks or m._forward_pre_hooks:
            bad.append(f"{name}: hooks")
        if any(b.endswith("_mask") for b in m._buffers):
            bad.append(f"{name}: mask buffer")
    if hasattr(model, "_fxparam_plan"):
        bad.append("plan")
    return bad


def _logits(out: Any) -> torch.Tensor:
    out = getattr(out, "logits", out)
    return out[0] if isinstance(out, tuple) else out


def test_fold_gpt_with_masks_and_norm_swaps_equals_the_transformed_model() -> None:
    torch.manual_seed(0)
    make = lambda: GPT(GPTConfig(width=32, depth=2, heads=2, vocab=256, seq_len=32))  # noqa: E731
    model = fxparam.transform(make(), "completep+supar+gns", density=0.5, **KW).eval()
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ref = model(idx)
    folded = fxparam.fold(model)
    assert type(folded) is GPT and _plain_state(folded) == []
    assert list(folded.state_dict()) == list(make().state_dict())
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(idx), ref, rtol=1e-5, atol=1e-5)
    assert fxparam.verify(model).ok, "fold must not touch the transformed model"
    plain = make().eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(idx), ref, rtol=1e-3, atol=1e-3)  # negative control


def test_tied_weights_needing_two_factors_are_listed_and_untie_folds_them() -> None:
    torch.manual_seed(0)
    model = fxparam.transform(_nanogpt(), "completep", **KW).eval()
    idx = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        ref = _logits(model(idx, idx))
    with pytest.raises(fxparam.LoweringError, match=r"transformer\.wte\.weight and lm_head\.weight share one weight"
                                                   r".*untie=True"):
        fxparam.fold(model)
    folded = fxparam.fold(model, untie=True)
    assert _plain_state(folded) == []
    assert folded.lm_head.weight is not folded.transformer.wte.weight
    with torch.no_grad():
        torch.testing.assert_close(_logits(folded.eval()(idx, idx)), ref, rtol=1e-5, atol=1e-5)


def test_folded_hf_llama_saves_loads_with_plain_transformers_and_generates_the_same_tokens(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import LlamaForCausalLM

    from fxparam.models.hf import hf_model

    torch.manual_seed(0)
    model = fxparam.transform(hf_model("llama"), "completep", **KW).eval()
    idx = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        ref = model(input_ids=idx).logits
        ref_tokens = model.generate(idx, max_new_tokens=6, do_sample=False)
    folded = fxparam.fold(model)
    folded.save_pretrained(tmp_path / "folded")
    assert "fxparam_plan" not in (tmp_path / "folded" / "config.json").read_text()
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "folded").eval()
    assert _plain_state(loaded) == []
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=idx).logits, ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(loaded.generate(idx, max_new_tokens=6, do_sample=False), ref_tokens)
    # negative control: the unfolded transformed weights saved plainly do not generate the same logits
    plain = hf_model("llama").eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(input_ids=idx).logits, ref, rtol=1e-3, atol=1e-3)


def test_fold_of_an_untransformed_model_is_refused() -> None:
    with pytest.raises(fxparam.LoweringError, match="not transformed"):
        fxparam.fold(GPT(GPTConfig(width=32, depth=2, heads=2, vocab=256, seq_len=32)))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_fold_of_conv1d_and_per_head_fused_qkv_absorbs_branch_and_attention_factors(arch: str, tmp_path: Path) -> None:
    """GPT-2's Conv1D stores W as (in, out): a factor on its output scales W's columns; GPT-NeoX's
    query_key_value is laid out per head as [q_h; k_h; v_h].  Expected weights from first principles:
    CompleteP's branch factor (L/L0)^-1 = 1/2 on each branch's last matmul (Dey et al. 2025, Table 1),
    muP's attention ratio (1/d)/(1/sqrt(d)) * sqrt(d0) = sqrt(d0/d) = sqrt(4/16) = 1/2 on q only."""
    pytest.importorskip("transformers")
    import transformers

    from fxparam.models.hf import hf_model

    torch.manual_seed(0)
    kw = {"base_width": 16, "base_depth": 1, "base_head_dim": 4, "output_multiplier": 1.5}
    model = fxparam.transform(hf_model(arch), "completep", **kw).eval()
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size // model.config.num_attention_heads == 16
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=idx).logits
    folded = fxparam.fold(model, untie=True)
    assert _plain_state(folded) == []
    after = folded.state_dict()
    if arch == "gpt2":
        proj, qkv = "transformer.h.0.attn.c_proj", "transformer.h.0.attn.c_attn"
        torch.testing.assert_close(after[proj + ".weight"], before[proj + ".weight"] * 0.5, rtol=0, atol=0)
        w = before[qkv + ".weight"].clone()  # (in, 3 * width): columns [q | k | v]
        w[:, :64] *= 0.5
        torch.testing.assert_close(after[qkv + ".weight"], w, rtol=0, atol=0)
        assert folded.transformer.h[0].attn.scaling == 16 ** -0.5  # the class's own scale, as from_pretrained builds it
    else:
        proj, qkv = "gpt_neox.layers.0.attention.dense", "gpt_neox.layers.0.attention.query_key_value"
        torch.testing.assert_close(after[proj + ".weight"], before[proj + ".weight"] * 0.5, rtol=0, atol=0)
        w = before[qkv + ".weight"].clone().view(4, 3, 16, 64)  # (heads, [q k v], head_dim, in)
        w[:, 0] *= 0.5
        torch.testing.assert_close(after[qkv + ".weight"], w.view(192, 64), rtol=0, atol=0)
    folded.save_pretrained(tmp_path / "folded")
    loaded = getattr(transformers, type(model).__name__).from_pretrained(tmp_path / "folded").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=idx).logits, ref, rtol=1e-4, atol=1e-4)
    # negative control: the transformed weights in a plain model compute something else
    plain = hf_model(arch).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(plain(input_ids=idx).logits, ref, rtol=1e-3, atol=1e-3)


def test_fold_of_an_moe_absorbs_the_branch_factor_into_the_experts_down_proj_and_the_router_factor(
    tmp_path: Path,
) -> None:
    """Mixtral's batched experts are no Linear: their output sum_k g_k down_k(silu(gate_k x) * up_k x) is linear
    in down_proj only, and the router's logits are linear in its weight.  Expected from first principles:
    down_proj x (L/L0)^-1 = 1/2 (CompleteP, Dey et al. 2025), router weight x base_width/width = 16/64 (its
    output, the experts axis, does not grow with width: a readout, muP Table 3), gate_up_proj unchanged
    (silu is not homogeneous: scaling it would change the output - the fold's per-parameter trial rejects it)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=64, use_cache=False)
    model = fxparam.transform(transformers.MixtralForCausalLM(cfg), "completep", base_width=16, base_depth=1).eval()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=idx).logits
    folded = fxparam.fold(model)
    after = folded.state_dict()
    experts = "model.layers.1.mlp.experts"
    torch.testing.assert_close(after[experts + ".down_proj"], before[experts + ".down_proj"] * 0.5, rtol=0, atol=0)
    assert torch.equal(after[experts + ".gate_up_proj"], before[experts + ".gate_up_proj"])
    torch.testing.assert_close(after["model.layers.1.mlp.gate.weight"], before["model.layers.1.mlp.gate.weight"] * 0.25,
                               rtol=0, atol=0)
    assert _plain_state(folded) == []
    folded.save_pretrained(tmp_path / "folded")
    loaded = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "folded").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=idx).logits, ref, rtol=1e-4, atol=1e-4)
    plain = transformers.MixtralForCausalLM(cfg).eval()  # negative control: the unfolded weights differ
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(input_ids=idx).logits, ref, rtol=1e-3, atol=1e-3)


def test_a_failed_inplace_fold_leaves_the_transformed_model_exactly_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection at the last step (the equality check fails after untying, scaling weights and
    stripping hooks): the in-place model is restored - tie, Parameter identity, values, hooks, plan."""
    import fxparam.lowering.fold as fold_mod

    torch.manual_seed(0)
    model = fxparam.transform(_nanogpt(), "completep", **KW).eval()
    idx = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        ref = _logits(model(idx, idx))
    params = {n: (id(p), p.detach().clone()) for n, p in model.named_parameters(remove_duplicate=False)}
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks), type(m)) for n, m in model.named_modules()}
    real = fold_mod._outputs
    calls = []

    def broken(m: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        calls.append(1)
        y = real(m, args, kwargs)
        return y + 1.0 if len(calls) == 2 else y  # the folded model's check

    monkeypatch.setattr(fold_mod, "_outputs", broken)
    with pytest.raises(fxparam.LoweringError, match="differs from the transformed model"):
        fxparam.fold(model, untie=True, example_inputs=(idx, idx), inplace=True)
    assert len(calls) == 2
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    after = {n: (id(p), p.detach().clone()) for n, p in model.named_parameters(remove_duplicate=False)}
    assert after.keys() == params.keys()
    assert all(after[n][0] == params[n][0] and torch.equal(after[n][1], params[n][1]) for n in params)
    assert {n: (len(m._forward_hooks), len(m._forward_pre_hooks), type(m)) for n, m in model.named_modules()} == hooks
    assert fxparam.verify(model).ok
    with torch.no_grad():
        assert torch.equal(_logits(model(idx, idx)), ref)
