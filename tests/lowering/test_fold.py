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
