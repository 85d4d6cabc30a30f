"""Review R-final: the lead's last mechanisms tried on small models a user would write.

Expected values come from the rules by hand (muP readout 1/m_d, Tensor Programs V Table 3; a
width constant c(d) divided out by c(d_base)/c(d)), from brute force in the test (every position
perturbed for look-ahead, q.k computed by hand for attention logits), never from fxparam's output.
"""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxparam
from fxparam.analysis.rebuild import WidthConstantWarning
from fxparam.checks.coord import _Recorder, _SoftmaxObserver, looks_ahead

IDS = torch.zeros(2, 8, dtype=torch.long)


# ------------------------------------------------------------------ width constants (mechanism 1)


class Block(nn.Module):
    def __init__(self, d, scaled=False):
        super().__init__()
        self.d, self.scaled = d, scaled
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(2 * d, d)

    def forward(self, x):
        y = self.proj(F.gelu(self.fc(self.ln(x))))
        return x + (y * (64 / self.d) if self.scaled else y)


class Net(nn.Module):
    def __init__(self, width=64, kind="readout", depth=2, scaled=False, vocab=50):
        super().__init__()
        self.d, self.kind = width, kind
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width, scaled) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.aux = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        h = self.ln_f(x)
        if self.kind == "readout":  # the user's own 1/d on the readout's input
            return self.head(h * (1 / self.d))
        if self.kind == "shared":  # one constant, two consumers
            hh = h * (1 / self.d)
            return self.head(hh) + self.aux(hh)
        return self.head(h)


def _plan(kind, rebuild, **kw):
    extra = {"rebuild": lambda width: Net(width, kind, **kw)} if rebuild else {}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = fxparam.plan(Net(256, kind, **kw), "mup", example_inputs=IDS, base_width=64, **extra)
    return p, [x for x in w if issubclass(x.category, WidthConstantWarning)]


def _factor_into(p, consumer, path):
    """The product of the plan's multipliers on ``path`` (module outputs) and on ``consumer``'s input."""
    f = p.multipliers.get(f"input:{consumer}", 1.0)
    for m in path:
        f *= p.multipliers.get(m, 1.0)
    return f


M_D = 256 / 64


def test_readout_input_one_over_d_without_rebuild_warns_naming_rebuild():
    p, warned = _plan("readout", rebuild=False)
    assert warned and "rebuild=" in str(warned[0].message)


@pytest.mark.parametrize("kind,consumers", [("readout", ["head"]), ("shared", ["head", "aux"])])
def test_readout_input_one_over_d_with_rebuild_is_divided_out(kind, consumers):
    # the model at width 256 has h/256; muP of the base model (h/64) is h/64 * 1/m_d = h/256: net factor 1
    # on the way from ln_f to each readout (divide out x m_d, muP's 1/m_d)
    p, warned = _plan(kind, rebuild=True)
    assert not warned
    for c in consumers:
        assert _factor_into(p, c, ["ln_f"]) == pytest.approx(M_D * (1 / M_D))


def test_width_constant_in_every_block_of_a_modulelist_is_divided_out_in_each():
    # 64/d on each of 3 branches: x m_d on every block's proj output; the negative control (no constant)
    # gets none there
    p, _ = _plan("none", rebuild=True, depth=3, scaled=True)
    for i in range(3):
        assert p.multipliers.get(f"blocks.{i}.proj", 1.0) == pytest.approx(M_D)
    p0, _ = _plan("none", rebuild=True, depth=3, scaled=False)
    assert all(p0.multipliers.get(f"blocks.{i}.proj", 1.0) == 1.0 for i in range(3))


# ------------------------------------------------------------------ own depth factors (mechanism 2)


class GPT2Block(nn.Module):
    """Two branches per block, each scaled in forward like GPT-2's 1/sqrt(2 n_layer) (or 1/n_layer)."""

    def __init__(self, d, n_layer, mode):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.mp = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.L, self.mode = n_layer, mode
        self.register_buffer("rs", torch.tensor(1 / math.sqrt(2 * n_layer)))  # GPT-2's factor as a buffer
        self.register_buffer("root", torch.tensor(math.sqrt(2 * n_layer)))
        self.gain = nn.Parameter(torch.full((d,), 1 / math.sqrt(2 * n_layer)))  # LayerScale: learned, not a rule

    def attn(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, 4, C // 4).transpose(1, 2) for t in self.qkv(x).split(C, 2))
        return self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        if self.mode in ("buffer", "buffer_div", "layerscale"):
            x = x + (self.rs * self.attn(self.ln1(x)) if self.mode == "buffer" else
                     self.attn(self.ln1(x)) / self.root if self.mode == "buffer_div" else self.gain * self.attn(self.ln1(x)))
            return x + self.mp(F.gelu(self.fc(self.ln2(x))))
        s = {"sqrt2L": 1 / math.sqrt(2 * self.L), "invL": 1 / self.L, "fixed": 0.3}[self.mode]
        x = x + self.attn(self.ln1(x)) * s
        return x + F.dropout(self.mp(F.gelu(self.fc(self.ln2(x)))), 0.1, self.training) * s


class GPT2(nn.Module):
    def __init__(self, width=64, depth=6, mode="sqrt2L"):
        super().__init__()
        self.wte = nn.Embedding(50, width)
        self.blocks = nn.ModuleList([GPT2Block(width, depth, mode) for _ in range(depth)])
        self.ln_f, self.head = nn.LayerNorm(width), nn.Linear(width, 50)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _depth_warnings(mode, config):
    kw = {"base_width": 64, "base_depth": 2} if config == "completep" else {"base_width": 64}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fxparam.plan(GPT2(mode=mode), config, example_inputs=IDS, **kw)
    return [str(x.message) for x in w if "residual branch" in str(x.message) and "scales the branch" in str(x.message)]


@pytest.mark.parametrize("mode,rule", [("sqrt2L", "1/sqrt(2L) at L = 6"), ("invL", "1/L at L = 6"),
                                       ("buffer", "1/sqrt(2L) at L = 6"), ("buffer_div", "1/sqrt(2L) at L = 6")])
def test_gpt2_style_branch_scaling_at_depth_6_warns_under_completep(mode, rule):
    (msg,) = _depth_warnings(mode, "completep")  # one warning for the 12 branches alike
    assert rule in msg


@pytest.mark.parametrize("mode,config", [("fixed", "completep"), ("sqrt2L", "mup"), ("layerscale", "completep")])
def test_depth_warning_negative_controls(mode, config):
    # a fixed 0.3; a width-only config does not scale depth; a learned LayerScale gain is no constant
    assert _depth_warnings(mode, config) == []


def test_scalar_buffer_on_a_branch_is_its_own_factor():
    # register_buffer('rs', 1/sqrt(2L)) read on the real model: 1/sqrt(12) on the attention branches,
    # 1 on the MLP branches (was 1 on both: the buffer was skipped as an unknown tensor factor)
    a = fxparam.inspect(GPT2(mode="buffer"), IDS)
    assert sorted({round(r.own_factor, 6) for r in a.residuals}) == [round(1 / math.sqrt(12), 6), 1.0]


# ------------------------------------------------------------------ looks_ahead (mechanism 3)


class TinyLM(nn.Module):
    """One attention layer over a hand-written mask: causal, prefix-LM (first P positions see each other),
    or causal with a padding mask built from the ids."""

    def __init__(self, kind, prefix=4, d=32, vocab=20):
        super().__init__()
        self.kind, self.P = kind, prefix
        self.e, self.qkv = nn.Embedding(vocab, d), nn.Linear(d, 3 * d)
        self.o, self.h = nn.Linear(d, d), nn.Linear(d, vocab)

    def forward(self, x):
        T = x.shape[1]
        h = self.e(x)
        q, k, v = self.qkv(h).split(h.shape[-1], -1)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        if self.kind == "prefix":
            mask[: self.P, : self.P] = True
        mask = mask[None]
        if self.kind == "pad":
            mask = (mask & (x != 0)[:, None, :]) | torch.eye(T, dtype=torch.bool)[None]
        att = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf")).softmax(-1)
        return {"logits": self.h(h + self.o(att @ v))}


def _sees_later_tokens(model, x):
    """Brute force: does the logit at any position i change when any token j > i changes?"""
    one = x[:1]
    with torch.no_grad():
        base = model(one)["logits"]
        for j in range(1, one.shape[1]):
            other = one.clone()
            other[0, j] = 1 + (int(one[0, j]) % 19)
            if (model(other)["logits"][:, :j] - base[:, :j]).abs().max() > 1e-6:
                return True
    return False


@pytest.mark.parametrize("kind,prefix", [("causal", 4), ("pad", 4), ("prefix", 4), ("prefix", 2)])
def test_looks_ahead_matches_brute_force(kind, prefix):
    torch.manual_seed(0)
    model = TinyLM(kind, prefix).eval()
    x = torch.randint(1, 20, (2, 8))
    x[0, 6:] = 0  # padding at the end for the padded model
    expected = _sees_later_tokens(model, x)
    assert expected == (kind == "prefix")  # the brute force itself: only the prefix-LM looks ahead
    assert looks_ahead(model, x) is expected


# ------------------------------------------------------------------ softmax-observed attention logits (mechanism 4)


class ManualAttn(nn.Module):
    def __init__(self, d, mask_value, hd=16):
        super().__init__()
        self.nh, self.hd, self.mask_value = d // hd, hd, mask_value
        self.qkv, self.o, self.drop = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False), nn.Dropout(0.1)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.nh, self.hd).transpose(1, 2) for t in self.qkv(x).split(C, -1))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, self.mask_value if self.mask_value is not None else torch.finfo(att.dtype).min)
        att = self.drop(F.softmax(att, dim=-1))
        return self.o((att @ v).transpose(1, 2).reshape(B, T, C))


class ManualNet(nn.Module):
    def __init__(self, width=64, mask_value=float("-inf")):
        super().__init__()
        self.e = nn.Embedding(50, width)
        self.ln1, self.attn = nn.LayerNorm(width), ManualAttn(width, mask_value)
        self.ln_f, self.h = nn.LayerNorm(width), nn.Linear(width, 50)

    def forward(self, x):
        h = self.e(x)
        h = h + self.attn(self.ln1(h))
        return self.h(self.ln_f(h))


def _recorded(model, analysis, x):
    """The coordinate check's recorder on one forward of ``model``, softmax observer on: key -> (kind, value)."""
    rec = _Recorder(model, analysis)
    try:
        with _SoftmaxObserver(rec.softmax_logits):
            model(x)
    finally:
        rec.remove()
    return rec.acts


@pytest.mark.parametrize("mask_value", [float("-inf"), None, -1e9])
def test_manual_attention_logits_recorded_at_softmax_match_hand_q_dot_k(mask_value):
    torch.manual_seed(0)
    model = ManualNet(mask_value=mask_value).train()  # dropout after the softmax: logits unaffected
    analysis = fxparam.inspect(model, IDS)
    assert [(a.module, a.kind) for a in analysis.attention] == [("attn", "manual")]
    x = torch.randint(0, 50, (2, 8))
    (kind, got), = [v for k, v in _recorded(model, analysis, x).items() if k.startswith("attn_logits:")]
    with torch.no_grad():  # by hand: the 36 causal (i >= j) entries of q.k / sqrt(16) per head
        hin = model.ln1(model.e(x))
        q, k, _ = (t.view(2, 8, 4, 16).transpose(1, 2) for t in model.attn.qkv(hin).split(64, -1))
        s = (q @ k.transpose(-2, -1)) / 4.0
        kept = s[..., torch.ones(8, 8, dtype=torch.bool).tril()]
    assert kind == "attn_logits" and got.numel() == kept.numel() == 2 * 4 * 36
    assert got.pow(2).mean().sqrt().item() == pytest.approx(kept.pow(2).mean().sqrt().item(), rel=1e-5)


class GatedAttn(nn.Module):
    """Manual attention with a second softmax in the same module (a head gate), before or after the scores'."""

    def __init__(self, d, gate_first):
        super().__init__()
        self.qkv, self.o, self.gate = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, 4)
        self.gate_first = gate_first

    def forward(self, x):
        B, T, C = x.shape
        g = F.softmax(self.gate(x), -1) if self.gate_first else None
        q, k, v = (t.view(B, T, 4, C // 4).transpose(1, 2) for t in self.qkv(x).split(C, -1))
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(C // 4)).masked_fill(~causal, float("-inf")).softmax(-1)
        g = g if g is not None else F.softmax(self.gate(x), -1)
        y = (att @ v) * g.transpose(1, 2)[..., None]
        return self.o(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("gate_first", [False, True])
def test_a_gate_softmax_inside_manual_attention_is_not_taken_for_its_logits(gate_first):
    torch.manual_seed(0)
    model = ManualNet()
    model.attn = GatedAttn(64, gate_first)
    analysis = fxparam.inspect(model, IDS)
    assert [(a.module, a.kind, a.softmax_index) for a in analysis.attention] == [("attn", "manual", int(gate_first))]
    x = torch.randint(0, 50, (2, 8))
    recorded = [v[1] for k, v in _recorded(model, analysis, x).items() if k.startswith("attn_logits:")]
    with torch.no_grad():  # by hand: the causal entries of q.k / 4; the gate's [2, 8, 4] softmax input is not one
        hin = model.ln1(model.e(x))
        q, k, _ = (t.view(2, 8, 4, 16).transpose(1, 2) for t in model.attn.qkv(hin).split(64, -1))
        kept = ((q @ k.transpose(-2, -1)) / 4.0)[..., torch.ones(8, 8, dtype=torch.bool).tril()]
    assert len(recorded) == 1 and recorded[0].numel() == kept.numel()
    assert recorded[0].pow(2).mean().sqrt().item() == pytest.approx(kept.pow(2).mean().sqrt().item(), rel=1e-5)
