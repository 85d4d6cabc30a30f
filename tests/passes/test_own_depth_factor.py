"""A residual branch the model already scales by a depth rule (GPT-2-style ``proj(y) / sqrt(2 * n_layer)``
written in forward): CompleteP's 1/m_L^alpha would come on top, silently scaling the branch twice.

Expected by hand: at L = 6, 1/sqrt(2L) = 0.2887 -> warned under a depth config; a fixed 0.3 and a
width-only config (muP) stay quiet; the factor read by the analysis is the constant in forward.
"""

import math
import warnings

import pytest
import torch
import torch.nn as nn

import fxparam

IDS = torch.zeros(2, 8, dtype=torch.long)


class Block(nn.Module):
    def __init__(self, d, factor):
        super().__init__()
        self.ln, self.fc, self.proj = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.factor = factor

    def forward(self, x):
        return x + self.proj(torch.relu(self.fc(self.ln(x)))) * self.factor


class LM(nn.Module):
    def __init__(self, depth=6, width=32, vocab=40, factor=None):
        super().__init__()
        factor = 1 / math.sqrt(2 * depth) if factor is None else factor
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width, factor) for _ in range(depth)])
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _warnings(model, config, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = fxparam.plan(model, config, example_inputs=IDS, **kw)
    return [str(w.message) for w in caught if "depth scaling" in str(w.message)], plan


def test_own_factor_is_read_from_forward():
    a = fxparam.inspect(LM(), IDS)
    assert {round(r.own_factor, 6) for r in a.residuals} == {round(1 / math.sqrt(12), 6)}


def test_depth_rule_in_forward_warns_under_completep():
    found, plan = _warnings(LM(), fxparam.CompleteP(base_width=32, base_depth=2))
    assert len(found) == 1 and "1/sqrt(2L) at L = 6" in found[0] and "'blocks.0'" in found[0]
    assert any("depth scaling" in n for n in plan.notes)


@pytest.mark.parametrize("model, config", [
    (LM(factor=0.3), fxparam.CompleteP(base_width=32, base_depth=2)),  # a fixed constant: no rule matches
    (LM(), fxparam.MuP(base_width=32)),  # width only: nothing scales the branch twice
])
def test_quiet_controls(model, config):
    found, _ = _warnings(model, config)
    assert found == []
