"""Issue 13, cases 8, 9 and 12: encoder-decoder depth, attention scales per layer and by ratio,
attention whose scale sits where fxparam must look for it (or a loud warning).

Expected values are the models' own construction: T5 multiplies q.k by 1.0 (no 1/sqrt(d)),
GPT-2 with ``scale_attn_by_inverse_layer_idx`` by 1/sqrt(d_head)/(layer+1), the hand-written
models below by the constant written in their forward.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.configs import CompleteP, MuP

transformers = pytest.importorskip("transformers")

IDS = torch.arange(16).reshape(2, 8) % 64


def _t5(enc: int = 2, dec: int = 2):
    cfg = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=enc, num_decoder_layers=dec, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(cfg).eval()


T5_INPUTS = {"input_ids": IDS, "decoder_input_ids": IDS, "use_cache": False}


def _t5_logits(model):
    with torch.no_grad():
        return model(**T5_INPUTS).logits


# ------------------------------------------------------------------ case 8: T5 (encoder-decoder)


def test_t5_each_stack_is_a_stream_with_its_own_depth():
    a = fxparam.inspect(_t5(2, 2), example_inputs=T5_INPUTS)
    assert a.stream_depths == [2, 2] and a.depth == 2
    assert sorted(a.blocks) == ["decoder.block.0", "decoder.block.1", "encoder.block.0", "encoder.block.1"]
    # sub-layers (layer.0 attention, layer.1 FF, ...) are branches of a block, never blocks
    assert not any(".layer." in b for b in a.blocks)
    enc = [r for r in a.residuals if r.block.startswith("encoder")]
    dec = [r for r in a.residuals if r.block.startswith("decoder")]
    assert len(enc) == 2 * 2 and len(dec) == 3 * 2  # self-attn + FF; self-attn + cross-attn + FF
    assert {r.stream for r in enc} != {r.stream for r in dec}


def test_t5_unequal_stacks_get_their_own_m_L():
    model = _t5(3, 1)
    with pytest.warns(UserWarning, match="different depths"):
        plan = fxparam.plan(model, CompleteP(base_width=32, base_depth=1), example_inputs=T5_INPUTS)
    for key, factor in plan.multipliers.items():
        if key.endswith((".o", ".wo")):
            want = 1 / 3 if key.startswith("encoder") else 1.0
            assert factor == pytest.approx(want), key
    assert sum(k.startswith("encoder") and k.endswith((".o", ".wo")) for k in plan.multipliers) == 3 * 2


def test_t5_mup_at_base_width_keeps_its_unscaled_attention_and_logits():
    model = _t5()
    before = _t5_logits(model)
    plan = fxparam.plan(model, MuP(base_width=32), example_inputs=T5_INPUTS)
    assert plan.attention and all(s.previous == 1.0 and s.scale == 1.0 for s in plan.attention.values())
    fxparam.apply_plan(model, plan, example_inputs=T5_INPUTS)
    torch.testing.assert_close(_t5_logits(model), before)
    # negative control: the absolute rule 1/sqrt(d_head) (what a width-only reading would set)
    broken = _t5()
    for m in broken.modules():
        if type(m).__name__ == "T5Attention":
            m.scaling = 1 / math.sqrt(8)
    assert (_t5_logits(broken) - before).abs().max() > 1e-2


# ------------------------------------------------------------------ case 9: GPT-2 per-layer scales


def _gpt2(n_layer: int = 3, n_embd: int = 64, n_head: int = 4):
    cfg = transformers.GPT2Config(
        vocab_size=64, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=32,
        scale_attn_by_inverse_layer_idx=True, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("n_layer", [3, 5])
def test_gpt2_inverse_layer_idx_scales_are_kept_per_layer(n_layer):
    model = _gpt2(n_layer)
    head_dim = 64 // 4
    want = {f"transformer.h.{i}.attn": 1 / math.sqrt(head_dim) / (i + 1) for i in range(n_layer)}
    a = fxparam.inspect(model)
    assert {s.module: s.scale for s in a.attention} == pytest.approx(want)
    with torch.no_grad():
        before = model(IDS).logits
    plan = fxparam.plan(model, MuP(base_width=64))
    assert {k: s.previous for k, s in plan.attention.items()} == pytest.approx(want)
    assert {k: s.scale for k, s in plan.attention.items()} == pytest.approx(want)  # ratio 1 at base width
    fxparam.apply_plan(model, plan)
    assert [model.transformer.h[i].attn.scaling for i in range(n_layer)] == pytest.approx(list(want.values()))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, before)


def test_gpt2_mup_ratio_scales_each_layer_by_the_same_factor():
    """base_head_dim 4 at head dim 16: muP (a_attn / d) over SP (1/sqrt d) = sqrt(4/16) = 0.5, per layer."""
    model = _gpt2(3)
    plan = fxparam.plan(model, MuP(base_width=64, base_head_dim=4))
    for i in range(3):
        s = plan.attention[f"transformer.h.{i}.attn"]
        assert s.previous == pytest.approx(0.25 / (i + 1))
        assert s.scale == pytest.approx(0.5 * 0.25 / (i + 1))
