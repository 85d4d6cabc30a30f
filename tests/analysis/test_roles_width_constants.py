"""Issue 13, case 10: an embedding multiplied by sqrt(d) inside forward, and the second-width build.

muP keeps embedding-output coordinates Theta(1) at every width (Tensor Programs V, Table 3);
``x = wte(idx) * sqrt(d)`` makes them grow like sqrt(m_d).  The expected values are computed
here from that rule: after muP at base width 64, the embedding output's RMS at width 256 equals
the one at width 64 (ratio 1); SP (the control) keeps the growth, ratio sqrt(256/64) = 2.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxparam
from fxparam.analysis import analyse
from fxparam.analysis.rebuild import WidthConstantWarning

IDS = torch.zeros(2, 8, dtype=torch.long)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.proj(F.gelu(self.fc(self.ln(x))))


class ScaledEmbedding(nn.Module):
    def __init__(self, width=64, vocab=50, depth=2):
        super().__init__()
        self.d = width
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.wte(idx) * math.sqrt(self.d)  # a forward constant that changes with width
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _embedding_rms(width, config):
    torch.manual_seed(0)
    model = ScaledEmbedding(width)
    fxparam.transform(model, config, example_inputs=IDS, **({"base_width": 64} if config == "mup" else {}))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(torch.randint(0, 50, (8, 32)))
    return seen["x"].pow(2).mean().sqrt().item()


def test_case10_constant_found_with_its_exponent():
    a = analyse(ScaledEmbedding(), IDS)
    (c,) = a.width_constants
    assert (c.value, c.exponent, c.scales) == (pytest.approx(8.0), 0.5, "wte")
    a2 = analyse(ScaledEmbedding(), IDS, rebuild=lambda width: ScaledEmbedding(width))
    (c2,) = a2.width_constants
    assert c2.exponent == pytest.approx(0.5) and "width 128" in c2.evidence  # measured on the second build


def test_case10_mup_divides_the_constant_out():
    m_d = 256 / 64
    p = fxparam.plan(ScaledEmbedding(256), "mup", example_inputs=IDS, base_width=64)
    assert p.multipliers["wte"] == pytest.approx(m_d**-0.5)
    assert any("sqrt" in n or "constant" in n for n in p.notes)
    mup = _embedding_rms(256, "mup") / _embedding_rms(64, "mup")
    sp = _embedding_rms(256, "sp") / _embedding_rms(64, "sp")
    assert mup == pytest.approx(1.0, rel=0.1)  # flat
    assert sp == pytest.approx(math.sqrt(m_d), rel=0.1)  # the control grows like sqrt(m_d)


class ConstantInBlock(ScaledEmbedding):
    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x) / self.d  # width-dependent, not on an embedding: not corrected, so loud
        return self.head(self.ln_f(x))


def test_width_constant_away_from_an_embedding_is_a_warning_with_a_second_build():
    with pytest.warns(WidthConstantWarning, match="does not correct it"):
        a = analyse(ConstantInBlock(), IDS, rebuild=lambda width: ConstantInBlock(width))
    assert any(c.exponent == pytest.approx(-1.0) and c.scales is None for c in a.width_constants)


def test_second_build_cross_checks_width_axes():
    from fxparam.models import GPT, GPTConfig

    a = analyse(GPT(GPTConfig(width=64, depth=2, vocab=64)), rebuild=True)
    assert not [n for n in a.notes if n.startswith("rebuild")]  # dims agree with the 2x build
    assert a.params["lm_head.weight"].role == "readout" and a.params["lm_head.weight"].width_dims == [1]


# --- width constants away from an embedding (found by the issue-13 follow-up) ----------------------------------
# muP's readout rule (Tensor Programs V, Table 3: output multiplier alpha_out / m_d) assumes the readout's
# input is the width-independent forward of the base model.  ``head(x * d**-0.5)`` shrinks that input like
# m_d^-0.5; dividing the constant out (input multiplier m_d^0.5 on the head) restores the base model's
# constant, so at the same weights logits(muP) / logits(untransformed) = m_d^0.5 / m_d = m_d^-0.5.


class ScaledReadoutInput(ScaledEmbedding):
    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x * self.d**-0.5)  # no final norm: the constant reaches the readout


def test_readout_input_constant_divided_out_with_a_second_build():
    torch.manual_seed(0)
    model = ScaledReadoutInput(256)
    nn.init.zeros_(model.head.bias)
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        before = model(ids)
    fxparam.transform(model, "mup", example_inputs=IDS, base_width=64, init=False,
                      rebuild=lambda width: ScaledReadoutInput(width))
    (c,) = analyse(ScaledReadoutInput(256), IDS, rebuild=lambda width: ScaledReadoutInput(width)).width_constants
    assert (c.scales, c.on, c.exponent) == ("head", "input", pytest.approx(-0.5))
    with torch.no_grad():
        ratio = model(ids) / before
    assert ratio.mean().item() == pytest.approx((256 / 64) ** -0.5, rel=1e-5)


def test_readout_input_constant_without_a_second_build_is_loud():
    with pytest.warns(WidthConstantWarning, match="rebuild="):
        a = analyse(ScaledReadoutInput(256), IDS)
    assert [c.scales for c in a.width_constants] == [None]  # equal to 256^-0.5, unconfirmed: warned, not corrected


class ScaledBranch(nn.Module):
    """A residual branch whose projection output is multiplied by sqrt(d) (3 blocks: one past the captured 2)."""

    def __init__(self, width=64, vocab=50, depth=3):
        super().__init__()
        self.d = width
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([BranchBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x, self.d)
        return self.head(x)


class BranchBlock(Block):
    def forward(self, x, d):
        return x + self.proj(F.gelu(self.fc(self.ln(x)))) * d**0.5


def test_branch_constant_divided_out_on_every_block():
    a = analyse(ScaledBranch(), IDS, rebuild=lambda width: ScaledBranch(width))
    assert sorted(c.scales for c in a.width_constants) == ["blocks.0.proj", "blocks.1.proj", "blocks.2.proj"]
    p = fxparam.plan(ScaledBranch(256), "mup", example_inputs=IDS, base_width=64,
                     rebuild=lambda width: ScaledBranch(width))
    for i in range(3):  # sqrt(d) grows like m_d^0.5: divided out by m_d^-0.5 = 0.5 on each projection
        assert p.multipliers[f"blocks.{i}.proj"] == pytest.approx(0.5)


class ManualAttentionFixedHeads(nn.Module):
    """Two heads at any width: head dim d/2 grows, and so does the 1/sqrt(head dim) logit scale."""

    def __init__(self, width=64, vocab=50):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.o = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        B, T, D = x.shape
        q, k, v = (t.view(B, T, 2, D // 2).transpose(1, 2) for t in self.qkv(x).split(D, -1))
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(D // 2)).softmax(-1)
        return self.head(x + self.o((att @ v).transpose(1, 2).reshape(B, T, D)))


class ManualRMSNorm(nn.Module):
    def __init__(self, width=64, vocab=50):
        super().__init__()
        self.d = width
        self.wte = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        return self.head(x * (x.pow(2).sum(-1, keepdim=True) / self.d + 1e-6).rsqrt())  # sum / d is a mean


@pytest.mark.parametrize("cls", [ManualAttentionFixedHeads, ManualRMSNorm])
def test_attention_scales_and_means_are_not_width_constants(cls, recwarn):
    a = analyse(cls(), IDS, rebuild=lambda width: cls(width))
    assert a.width_constants == []
    assert not [w for w in recwarn if issubclass(w.category, WidthConstantWarning)]


def test_constants_on_tensors_without_a_width_axis_are_not_width_constants(recwarn):
    """T5's relative-position buckets divide positions by constants (one is 8 = 64^0.5 at width 64): no
    width axis, nothing muP scales; the earlier power-of-width rule warned on it."""
    from tests.analysis._zoo import build, example_inputs

    a = analyse(build("t5"), example_inputs("t5"))
    assert a.width_constants == []
    assert not [w for w in recwarn if issubclass(w.category, WidthConstantWarning)]
    # the control: the same rule still reports a width constant on a width-carrying tensor
    assert analyse(ScaledReadoutInput(256), IDS).width_constants
