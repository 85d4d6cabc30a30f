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


# ------------------------------------------------------------------ case 12: wherever the scale lives

D, HEADS, HD, V = 32, 2, 16, 64


class Attn(nn.Module):
    """Causal attention whose logit scale sits in a different place per ``where``."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.where = where
        self.scale = HD**-0.5
        self.register_buffer("temp", torch.tensor(HD**-0.5))

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        w = self.where
        if w == "mul":
            return (q @ k.transpose(-2, -1)) * self.scale
        if w == "baddbmm":  # fused batched matmul with a bias and the scale as alpha
            b, h, t, d = q.shape
            bias = torch.zeros(b * h, t, t, dtype=q.dtype, device=q.device)
            out = torch.baddbmm(bias, q.reshape(b * h, t, d), k.reshape(b * h, t, d).transpose(1, 2), alpha=self.scale)
            return out.view(b, h, t, t)
        if w == "fold_q":
            return (q * self.scale) @ k.transpose(-2, -1)
        if w == "buffer":  # a tensor factor: not a constant fxparam can read
            return (q @ k.transpose(-2, -1)) * self.temp
        if w == "softcap":  # nonlinear soft-capping after the scale
            return 5.0 * torch.tanh((q @ k.transpose(-2, -1)) * self.scale / 5.0)
        raise ValueError(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, HEADS, HD).transpose(1, 2) for z in self.qkv(x).split(D, dim=-1))
        if self.where == "sdpa_fold":
            y = torch.nn.functional.scaled_dot_product_attention(q * self.scale, k, v, is_causal=True, scale=1.0)
        else:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            att = self._scores(q, k).masked_fill(mask, float("-inf")).softmax(-1)
            y = att @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, D))


class AttnLM(nn.Module):
    def __init__(self, where: str, n: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.lns = nn.ModuleList([nn.LayerNorm(D) for _ in range(n)])
        self.attns = nn.ModuleList([Attn(where) for _ in range(n)])
        self.router = nn.Linear(D, 4)  # a softmax over a projection: not attention
        self.head = nn.Linear(D, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for ln, attn in zip(self.lns, self.attns, strict=True):
            x = x + attn(ln(x))
        gate = self.router(x).softmax(-1)[..., :1]
        return self.head(x * gate)


@pytest.mark.parametrize("where", ["mul", "baddbmm", "fold_q", "sdpa_fold"])
def test_attention_scale_found_wherever_it_lives(where):
    a = fxparam.inspect(AttnLM(where), example_inputs=(IDS,))
    assert [s.module for s in a.attention] == ["attns.0", "attns.1"]  # the router's softmax is not attention
    for s in a.attention:
        assert s.head_dim == HD and s.scale == pytest.approx(HD**-0.5) and s.scale_attr == "scale"


@pytest.mark.parametrize("where", ["baddbmm", "fold_q"])
def test_mup_attention_ratio_applied_where_the_scale_lives(where):
    torch.manual_seed(0)
    model = AttnLM(where)
    reference, original = copy.deepcopy(model), copy.deepcopy(model)
    plan = fxparam.plan(model, MuP(base_width=D, base_head_dim=4), example_inputs=(IDS,))
    # muP: sqrt(4)/16 against 1/sqrt(16): ratio 0.5 on the model's 1/4
    assert {k: s.scale for k, s in plan.attention.items()} == pytest.approx({"attns.0": 0.125, "attns.1": 0.125})
    fxparam.apply_plan(model, plan, example_inputs=(IDS,))
    for attn in reference.attns:
        attn.scale = 0.125  # the model's own forward, run at the muP scale
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), reference(IDS))
        assert (model(IDS) - original(IDS)).abs().max() > 1e-4  # the new scale is in effect


@pytest.mark.parametrize("where", ["buffer", "softcap"])
def test_attention_scale_not_found_is_loud(where):
    model = AttnLM(where)
    a = fxparam.inspect(model, example_inputs=(IDS,))
    assert [(s.module, s.scale) for s in a.attention] == [("attns.0", None), ("attns.1", None)]
    assert any("'attns.0'" in note and "attention='sp'" in note for note in a.notes)  # inspect says so too
    with pytest.warns(UserWarning, match=r"'attns\.0'.*attention='sp'"):
        plan = fxparam.plan(model, MuP(base_width=D), example_inputs=(IDS,))
    assert not plan.attention
    assert any("attns.1" in note and "attention='sp'" in note for note in plan.notes)
    with warnings.catch_warnings():  # the override: SP attention, knowingly
        warnings.filterwarnings("error", message=".*logit scale.*")
        fxparam.plan(model, MuP(base_width=D, attention="sp"), example_inputs=(IDS,))


class LayerAttn(Attn):
    """A per-layer constant written inline (no attribute): 1/sqrt(d_head)/(layer + 1)."""

    def __init__(self, layer: int) -> None:
        super().__init__("mul")
        del self.scale
        self.layer = layer

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q @ k.transpose(-2, -1)) * (HD**-0.5 / (self.layer + 1))


def test_per_layer_inline_constant_is_read_per_layer_or_flagged():
    model = AttnLM("mul", n=4)
    model.attns = nn.ModuleList([LayerAttn(i) for i in range(4)])
    a = fxparam.inspect(model, example_inputs=(IDS,))
    got = {s.module: s.scale for s in a.attention}
    # layers 0 and 1 are captured (their constants are read); capture shortens the list to two blocks,
    # so the constants of layers 2 and 3 are not seen: unknown, never copied from layer 1
    assert got["attns.0"] == pytest.approx(0.25) and got["attns.1"] == pytest.approx(0.125)
    assert got["attns.2"] is None and got["attns.3"] is None
    with pytest.warns(UserWarning, match=r"'attns\.2'"):
        fxparam.plan(model, MuP(base_width=D), example_inputs=(IDS,))
