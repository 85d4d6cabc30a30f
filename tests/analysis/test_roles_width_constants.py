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
