"""Review R13b of issue 13: new models of the issue's kinds, tried as a new user would.

Every expected value is computed by hand in the test from the rules (Tensor Programs V Table 3,
CompleteP: residual branch x 1/m_L^alpha, muP attention alpha_attn/d_head), never read from
fxparam's own output.
"""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxparam
from fxparam.errors import AnalysisError, LoweringError

VOCAB = 50
IDS = (torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0)),)


# ----------------------------------------------------------------------------- MoE branch: a sum of experts


class MoEBlock(nn.Module):
    """Pre-norm MoE block: ``x + sum_e g_e * down_e(gelu(up_e(ln x))) [+ shared(ln x)]``, router with a bias.

    The routed sum is written inline in the block (no module returns it): the depth multiplier must go on
    every expert's ``down_e`` (and the shared expert), since g_e does not depend on down_e's output.
    """

    def __init__(self, d: int, experts: int = 3, shared: bool = True) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.router = nn.Linear(d, experts, bias=True)
        self.up = nn.ModuleList([nn.Linear(d, 2 * d, bias=False) for _ in range(experts)])
        self.down = nn.ModuleList([nn.Linear(2 * d, d, bias=False) for _ in range(experts)])
        self.shared = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) if shared else None

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        g = F.softmax(self.router(h), -1)
        out = sum(g[..., e : e + 1] * self.down[e](F.gelu(self.up[e](h))) for e in range(len(self.up)))
        if self.shared is not None:
            out = out + self.shared(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class MoELM(nn.Module):
    def __init__(self, d: int = 32, depth: int = 4, **kw) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList([MoEBlock(d, **kw) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _moe_by_hand(m: MoELM, idx: torch.Tensor, branch_mult: float) -> torch.Tensor:
    """x_{l+1} = x_l + branch_mult * (whole MoE branch): the skip never scaled (CompleteP)."""
    x = m.wte(idx)
    for b in m.blocks:
        x = x + branch_mult * b.branch(x)
    return m.head(m.ln_f(x))


@pytest.mark.parametrize("shared", [True, False])
def test_moe_routed_sum_gets_the_depth_multiplier_on_every_expert(shared: bool) -> None:
    # before: with a shared expert only `shared` was scaled (the routed experts' sum kept x1, silently);
    # without one, CompleteP refused the model. 4 blocks, 3 experts each (the capture keeps 2 of each list)
    m = MoELM(shared=shared)
    ref = copy.deepcopy(m)
    base_depth = 1
    m_L = 4 / base_depth
    fxparam.transform(m, fxparam.DepthScaled(base_depth=base_depth), example_inputs=IDS, init=False)
    with torch.no_grad():
        got, want, plain = m(*IDS), _moe_by_hand(ref, IDS[0], 1 / m_L), ref(*IDS)
    torch.testing.assert_close(got, want)
    assert (got - plain).abs().max() > 1e-3  # the multiplier is not a no-op on this model
    p = fxparam.plan(MoELM(shared=shared), fxparam.DepthScaled(base_depth=base_depth), example_inputs=IDS)
    expected = {f"blocks.{i}.down.{e}" for i in range(4) for e in range(3)}
    if shared:
        expected |= {f"blocks.{i}.shared.2" for i in range(4)}
    assert set(p.output_multipliers) == expected
    assert all(v == pytest.approx(1 / m_L) for v in p.output_multipliers.values())


def test_moe_only_shared_expert_scaled_would_be_wrong() -> None:
    # negative control for the test above: scaling only the shared expert (the old plan) is a different model
    m = MoELM(shared=True)
    with torch.no_grad():
        right = _moe_by_hand(m, IDS[0], 0.25)
        x = m.wte(IDS[0])
        for b in m.blocks:
            h = b.ln(x)
            g = F.softmax(b.router(h), -1)
            routed = sum(g[..., e : e + 1] * b.down[e](F.gelu(b.up[e](h))) for e in range(3))
            x = x + routed + 0.25 * b.shared(h)
        old = m.head(m.ln_f(x))
    assert (right - old).abs().max() > 1e-3


class SelfGatedBlock(nn.Module):
    """``x + y * sigmoid(y)``, y = proj(ln x): not linear in proj's output, so no module carries the multiplier."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.ln(x))
        return x + y * torch.sigmoid(y)


def test_branch_not_linear_in_any_module_output_is_refused() -> None:
    m = MoELM()
    m.blocks = nn.ModuleList([SelfGatedBlock(32) for _ in range(4)])
    with pytest.raises(AnalysisError, match=r"blocks\.0"):
        fxparam.plan(m, fxparam.DepthScaled(base_depth=1), example_inputs=IDS)


# ----------------------------------------------------------------------------- attention scores by einsum


class EinsumAttention(nn.Module):
    """Fixed 4 heads (head dim grows with width); scores ``einsum("bhqd,bhkd->bhqk", q, k) * scale``."""

    def __init__(self, d: int, heads: int = 4, attribute: bool = True, mup_scale: bool = False) -> None:
        super().__init__()
        self.heads, self.attribute = heads, attribute
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)
        self.scaling = (d // heads) ** (-1.0 if mup_scale else -0.5)  # mup_scale: the user's own 1/d_head

    def forward(self, x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in self.qkv(x).split(D, -1))
        if scale is None:
            scale = self.scaling if self.attribute else 1 / math.sqrt(D // self.heads)
        s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
        y = F.softmax(s, -1) @ v
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class EinsumBlock(nn.Module):
    def __init__(self, d: int, **kw) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = EinsumAttention(d, **kw)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), scale)
        return x + self.mlp(self.ln2(x))


class EinsumLM(nn.Module):
    def __init__(self, d: int = 64, **kw) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList([EinsumBlock(d, **kw) for _ in range(2)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, idx: torch.Tensor, scale: float | None = None, readout_mult: float = 1.0) -> torch.Tensor:
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x, scale)
        return self.head(self.ln_f(x) * readout_mult)


def test_einsum_attention_is_found_per_layer() -> None:
    # before: no attention site and no warning (the muP attention rule silently not applied)
    a = fxparam.inspect(EinsumLM(), IDS)
    assert [(s.module, s.head_dim) for s in a.attention] == [("blocks.0.attn", 16), ("blocks.1.attn", 16)]
    assert all(s.scale == pytest.approx(1 / 4) for s in a.attention)


def test_einsum_attention_gets_the_mup_logit_scale() -> None:
    # width 64, 4 heads (d_head 16); base width 32 with 4 heads: d_head_base 8. muP logit scale
    # alpha_attn / d_head with alpha_attn = sqrt(d_head_base): sqrt(8)/16; readout alpha_out/m_d = 1/2
    m = EinsumLM()
    ref = copy.deepcopy(m)
    fxparam.transform(m, fxparam.MuP(base_width=32, base_head_dim=8), example_inputs=IDS, init=False)
    with torch.no_grad():
        got = m(*IDS)
        want = ref(IDS[0], scale=math.sqrt(8) / 16, readout_mult=0.5)
        sp_scale = ref(IDS[0], scale=1 / 4, readout_mult=0.5)  # negative control: attention rule not applied
    torch.testing.assert_close(got, want)
    assert (got - sp_scale).abs().max() > 1e-4


def test_einsum_attention_scale_with_no_attribute_is_refused() -> None:
    # found, but its constant lives in no attribute: the eager lowering refuses naming the module (was silent)
    m = EinsumLM(attribute=False)
    with pytest.raises(LoweringError, match=r"blocks\.0\.attn"):
        fxparam.transform(m, fxparam.MuP(base_width=32, base_head_dim=8), example_inputs=IDS, init=False)


# ----------------------------------------------------------------------------- heads fixed, head dim grows


def test_head_dim_growing_with_width_is_read_from_the_second_build() -> None:
    # 4 heads at every width: d_head = d/4 (16 at 64, 32 at 128). muP's logit scale is alpha_attn/d_head with
    # alpha_attn = sqrt(d_head at the base width) = sqrt(32/4): sqrt(8)/16. Before: the default assumed heads
    # grow (d_head_base = 16: scale 1/4, i.e. SP's 1/sqrt(d_head) kept at every width), even with rebuild=
    m = EinsumLM()
    ref = copy.deepcopy(m)
    mup = fxparam.MuP(base_width=32)
    p = fxparam.plan(m, mup, example_inputs=IDS, rebuild=lambda w: EinsumLM(d=w))
    assert {k: v.scale for k, v in p.attention.items()} == {
        "blocks.0.attn": pytest.approx(math.sqrt(8) / 16),
        "blocks.1.attn": pytest.approx(math.sqrt(8) / 16),
    }
    assert any("head dim grows with width" in n for n in p.notes)
    fxparam.transform(m, mup, example_inputs=IDS, init=False, rebuild=lambda w: EinsumLM(d=w))
    with torch.no_grad():
        torch.testing.assert_close(m(*IDS), ref(IDS[0], scale=math.sqrt(8) / 16, readout_mult=0.5))


def test_heads_growing_keep_one_over_sqrt_head_dim() -> None:
    # control: the reference GPT grows its heads (head dim fixed at 16): a second build sees the same head dim,
    # so alpha_attn/d_head = sqrt(16)/16 = 1/sqrt(16), the model's own scale
    from fxparam.models.gpt import GPT, GPTConfig

    gpt = GPT(GPTConfig(width=64, depth=2, head_dim=16, vocab=VOCAB, seq_len=8))
    p = fxparam.plan(gpt, fxparam.MuP(base_width=32), example_inputs=IDS, rebuild=True)
    assert p.attention and all(v.scale == pytest.approx(1 / 4) == v.previous for v in p.attention.values())
    assert not any("second build: 16" in n for n in p.notes)
    # and GPT(heads=4) grows its head dim (16 at 64, 32 at 128): sqrt(8)/16, read from the second build
    gpt = GPT(GPTConfig(width=64, depth=2, heads=4, vocab=VOCAB, seq_len=8))
    p = fxparam.plan(gpt, fxparam.MuP(base_width=32), example_inputs=IDS, rebuild=True)
    assert p.attention and all(v.scale == pytest.approx(math.sqrt(8) / 16) for v in p.attention.values())


def test_model_already_at_one_over_head_dim_is_not_scaled_twice() -> None:
    # muP-style user code: scores * 1/d_head, heads fixed (d_head 16 at width 64, 8 at the base 32). muP's
    # alpha_attn/d_head with alpha_attn set so the base model is unchanged (1/8 = alpha/8: alpha = 1) is 1/16,
    # the model's own scale. Before: x sqrt(8/16) on top (1/16 * 0.707, the 1/d_head rule applied twice)
    make = lambda w: EinsumLM(d=w, mup_scale=True)  # noqa: E731
    m = make(64)
    ref = copy.deepcopy(m)
    mup = fxparam.MuP(base_width=32)
    p = fxparam.plan(m, mup, example_inputs=IDS, rebuild=make)
    assert all(v.scale == pytest.approx(1 / 16) for v in p.attention.values()) and len(p.attention) == 2
    fxparam.transform(m, mup, example_inputs=IDS, init=False, rebuild=make)
    with torch.no_grad():
        torch.testing.assert_close(m(*IDS), ref(IDS[0], scale=1 / 16, readout_mult=0.5))


# ----------------------------------------------------------------------------- alpha_in: input weights only, once


class FactorisedInput(nn.Module):
    """``Embedding(V, 16) -> Linear(16, d)``, 2 pre-norm blocks with a depthwise conv (fixed fan-in k) each."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.proj = nn.Linear(16, d)
        self.blocks = nn.ModuleList([_DWBlock(d) for _ in range(2)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, idx: torch.Tensor, alpha_in: float = 1.0, readout_mult: float = 1.0) -> torch.Tensor:
        x = self.proj(self.emb(idx)) * alpha_in
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x) * readout_mult)


class _DWBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.dw = nn.Conv1d(d, d, 3, padding=1, groups=d)  # weight [d, 1, 3]: fan-in 3, fan-out width
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.ln(x).transpose(1, 2)).transpose(1, 2)
        return x + self.fc(F.gelu(h))


def test_alpha_in_once_on_a_factorised_input_and_never_on_an_in_block_depthwise_conv() -> None:
    # alpha_in multiplies the model's input weight whose output is the width (proj); the 16-wide table has no
    # width dim and the depthwise convs read the residual stream: x1 (before: x alpha_in on emb, on proj and on
    # every block's dw: the embedding x100 and each branch x10)
    m = FactorisedInput()
    ref = copy.deepcopy(m)
    mup = fxparam.MuP(base_width=32, embedding_multiplier=10.0)
    p = fxparam.plan(m, mup, example_inputs=IDS)
    assert p.output_multipliers == {"proj": pytest.approx(10.0)}
    assert p.params["blocks.0.dw.weight"].role == "embedding"  # fixed fan-in: input-weight init/LR rules
    fxparam.transform(m, mup, example_inputs=IDS, init=False)
    with torch.no_grad():
        torch.testing.assert_close(m(*IDS), ref(IDS[0], alpha_in=10.0, readout_mult=0.5))


class RawTableLM(nn.Module):
    """Token table as a raw Parameter of the root, looked up with ``F.embedding``; readout ``h @ W``."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.E = nn.Parameter(torch.randn(VOCAB, d) * 0.02)
        self.blocks = nn.ModuleList([_DWBlock(d) for _ in range(2)])
        self.ln_f = nn.LayerNorm(d)
        self.W = nn.Parameter(torch.randn(d, VOCAB) * 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = F.embedding(idx, self.E)
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.W


def test_alpha_in_on_a_raw_table_of_the_root_is_refused() -> None:
    # before: alpha_in went on the root module's output, i.e. the logits x10, silently
    with pytest.raises(AnalysisError, match=r"'E'.*nn\.Embedding"):
        fxparam.plan(RawTableLM(), fxparam.MuP(base_width=32, embedding_multiplier=10.0), example_inputs=IDS)
    # alpha_in = 1 needs no multiplier: the readout's alpha_out/m_d = 1/2 lands on the final norm, by use
    m = RawTableLM()
    ref = copy.deepcopy(m)
    fxparam.transform(m, fxparam.MuP(base_width=32), example_inputs=IDS, init=False)
    with torch.no_grad():
        torch.testing.assert_close(m(*IDS), ref(*IDS) * 0.5)


# ----------------------------------------------------------------------------- muP-style constants, no second build


class MupStyleReadoutLM(nn.Module):
    """The user's own muP readout in forward: ``logits * base_width / width`` (mup's output_mult/width_mult)."""

    def __init__(self, d: int = 64, base: int = 32, own_mup: bool = True) -> None:
        super().__init__()
        self.factor = base / d if own_mup else 0.3
        self.wte = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList([_DWBlock(d) for _ in range(2)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x)) * self.factor


def test_mup_style_readout_constant_without_a_second_build_is_loud() -> None:
    # 0.5 = 32/64 = m_d^-1 on the readout's output: muP's alpha_out/m_d on top counts the width twice
    # (logits x 1/m_d^2). Before: silent (0.5 is no power of the width itself, so nothing was said)
    with pytest.warns(UserWarning, match=r"x0\.5 on the output of 'head' equals m_d\^-1.*rebuild="):
        p = fxparam.plan(MupStyleReadoutLM(), fxparam.MuP(base_width=32), example_inputs=IDS)
    assert any("counts the width twice" in n for n in p.notes)


def test_fixed_readout_constant_is_quiet() -> None:  # control: 0.3 is not a power of m_d = 2
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = fxparam.plan(MupStyleReadoutLM(own_mup=False), fxparam.MuP(base_width=32), example_inputs=IDS)
    assert not [w for w in caught if "counts the width twice" in str(w.message)]
    assert not any("counts the width twice" in n for n in p.notes)


def test_mup_style_readout_constant_with_a_second_build_is_divided_out() -> None:
    # with rebuild= the constant is seen to change (0.5 at 64, 0.25 at 128): muP divides it out (x m_d) and puts
    # its own alpha_out/m_d on the readout's input (as mup's MuReadout: the bias is not scaled):
    # logits = head(h / m_d) * (0.5 * m_d) -- the base model's constant 32/32, muP's readout multiplier
    m = MupStyleReadoutLM()
    ref = copy.deepcopy(m)
    fxparam.transform(m, fxparam.MuP(base_width=32), example_inputs=IDS, init=False,
                      rebuild=lambda w: MupStyleReadoutLM(d=w))
    with torch.no_grad():
        torch.testing.assert_close(m(*IDS), ref.head(ref.ln_f(_trunk(ref, IDS[0])) * 0.5) * (0.5 * 2))


def _trunk(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    x = m.wte(idx)
    for b in m.blocks:
        x = b(x)
    return x


# ----------------------------------------------------------------------------- a raw router Parameter in the block


class RawRouterBlock(MoEBlock):
    """Router as a raw Parameter of the block: ``softmax(F.linear(self.ln(x), self.gate_w))``."""

    def __init__(self, d: int, experts: int = 3) -> None:
        super().__init__(d, experts, shared=False)
        del self.router
        self.gate_w = nn.Parameter(torch.randn(experts, d) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        g = F.softmax(F.linear(h, self.gate_w), -1)
        return x + sum(g[..., e : e + 1] * self.down[e](F.gelu(self.up[e](h))) for e in range(len(self.up)))


def test_raw_router_in_a_block_never_scales_the_block_input() -> None:
    # before: alpha_out/m_d went on the input of the whole block (the residual stream, skip included: x0.5 on
    # every block's input, silently). The router's input ln(x) also feeds the experts: no module carries the
    # multiplier alone, so it is loud (warning naming roles=) and the block is left as it is; head: 1/2 by hand
    m = MoELM(d=64, depth=2)
    m.blocks = nn.ModuleList([RawRouterBlock(64) for _ in range(2)])
    ref = copy.deepcopy(m)
    mup = fxparam.MuP(base_width=32)
    with pytest.warns(UserWarning, match=r"blocks\.0\.gate_w.*roles="):
        p = fxparam.plan(m, mup, example_inputs=IDS)
    assert p.params["blocks.0.gate_w"].role == "readout"
    assert p.input_multipliers == {"head": pytest.approx(0.5)} and p.output_multipliers == {}
    assert any("NOT applied to 'blocks.0.gate_w'" in n for n in p.notes)
    with pytest.warns(UserWarning):
        fxparam.transform(m, mup, example_inputs=IDS, init=False)
    with torch.no_grad():
        torch.testing.assert_close(m(*IDS), ref.head(ref.ln_f(_trunk(ref, IDS[0])) * 0.5))


# ----------------------------------------------------------------------------- no residual stream: width units


class PlainCNN(nn.Module):
    """No residual stream: conv(3->c) -> conv(c->2c) -> flatten -> Linear(2c*4*4, 10)."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def test_width_units_without_a_residual_stream_are_said() -> None:
    # channels 32 at base 16 is m_d = 2, but the width read is the flatten's 2c*16 = 1024: base_width=16 gives
    # m_d = 64 (c2's LR x1/64, the readout x1/64). Before: silent; now a warning names the size it reads
    img = (torch.randn(2, 3, 16, 16),)
    with pytest.warns(UserWarning, match=r"width is read as 1024.*fc\.weight.*32 \(c1\.weight\)"):
        a = fxparam.inspect(PlainCNN(), img, rebuild=lambda c: PlainCNN(c))
    assert (a.params["c1.weight"].role, a.params["c2.weight"].role, a.params["fc.weight"].role) == (
        "embedding", "hidden", "readout")
    # with base_width in those units (the base model c = 16 has 512 there): m_d = 2, hidden LR 1/2, readout 1/2
    with pytest.warns(UserWarning):
        p = fxparam.plan(PlainCNN(), fxparam.MuP(base_width=512), example_inputs=img, rebuild=lambda c: PlainCNN(c))
    assert p.params["c2.weight"].lr_mult == pytest.approx(1 / 2)
    assert p.input_multipliers == {"fc": pytest.approx(1 / 2)}


class AveragedExperts(nn.Module):
    """``x + sum_e expert_e(ln x) / E``: a constant factor on an inline sum of module outputs."""

    def __init__(self, d: int, experts: int = 3) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.ex = nn.ModuleList([nn.Linear(d, d) for _ in range(experts)])

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return sum(e(h) for e in self.ex) / len(self.ex)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def test_averaged_experts_get_the_depth_multiplier_on_every_expert() -> None:
    m = MoELM(depth=4)
    m.blocks = nn.ModuleList([AveragedExperts(32) for _ in range(4)])
    ref = copy.deepcopy(m)
    p = fxparam.plan(m, fxparam.DepthScaled(base_depth=2), example_inputs=IDS)
    assert set(p.output_multipliers) == {f"blocks.{i}.ex.{e}" for i in range(4) for e in range(3)}
    fxparam.transform(m, fxparam.DepthScaled(base_depth=2), example_inputs=IDS, init=False)
    with torch.no_grad():
        torch.testing.assert_close(m(*IDS), _moe_by_hand(ref, IDS[0], 1 / 2))  # m_L = 4/2


def test_in_block_depthwise_conv_gets_the_block_depth_factors() -> None:
    # CompleteP alpha = 1/2, depth 4 / base 1: every in-block parameter's Adam LR x m_L^(alpha-1) = 4^-1/2 and
    # eps / (m_d m_L^alpha); the depthwise conv (input-weight rules: init sigma, no 1/m_d on its LR) included
    # (before: LR x1, eps 1/m_d, as the embedding outside the blocks)
    m = FactorisedInput()
    m.blocks = nn.ModuleList([_DWBlock(64) for _ in range(4)])
    p = fxparam.plan(m, fxparam.CompleteP(base_width=32, base_depth=1, alpha=0.5), example_inputs=IDS)
    m_d, m_L = 2.0, 4.0
    dw, proj, fc = p.params["blocks.3.dw.weight"], p.params["proj.weight"], p.params["blocks.3.fc.weight"]
    assert dw.role == "embedding" and dw.init_std == pytest.approx(0.02)
    assert dw.lr_mult == pytest.approx(m_L**-0.5) and dw.eps_mult == pytest.approx(1 / (m_d * m_L**0.5))
    assert proj.lr_mult == 1.0 and proj.eps_mult == pytest.approx(1 / m_d)  # outside the blocks: no depth factor
    assert fc.lr_mult == pytest.approx(m_L**-0.5 / m_d)  # control: the hidden rule of the same block
