"""Config gaps of issue 14 case 8: refused before any change, each ConfigError naming the fix."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import fxparam
from fxparam.models.gpt import GPT, GPTConfig


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(width=32, depth=2, heads=2, vocab=256, seq_len=32))


@pytest.mark.parametrize(
    ("config", "kwargs", "fix"),
    [
        ("completep+depthscaled", {"base_width": 16, "base_depth": 1}, r"twice.*'completep' alone"),
        ("mup+supar+supar", {"base_width": 16, "density": 0.5}, r"'supar' appears 2 times.*'mup\+supar'"),
        ("gns+completep+gns", {"base_width": 16, "base_depth": 1}, r"'gns' appears 2 times"),
        ({"kind": "mup", "base_width": 16}, {}, r"got dict.*config_from_json"),
        (None, {}, r"got NoneType"),
        (fxparam.MuP, {}, r"the class MuP.*fxparam.MuP\(base_width=256\)"),
        ("mup", {"base_width": 16, "output_multiplier": math.inf}, r"output_multiplier.*finite"),
        ("mup", {"base_width": 16, "embedding_multiplier": math.nan}, r"embedding_multiplier"),
        ("completep", {"base_width": 16, "base_depth": 1, "alpha": math.inf}, r"alpha"),
        ("mup", {"base_width": True}, r"base_width must be a number, got True.*base_width=256"),
    ],
)
def test_case8_config_gaps_are_config_errors_naming_the_fix(config: Any, kwargs: dict[str, Any], fix: str) -> None:
    model = _gpt()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(fxparam.ConfigError, match=fix):
        fxparam.transform(model, config, **kwargs)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_valid_neighbours_of_the_gaps_are_accepted() -> None:
    """Negative control: the fixes the messages name do work."""
    assert fxparam.plan(_gpt(), "mup+depthscaled", base_width=16, base_depth=1).m_L == 2.0
    assert fxparam.plan(_gpt(), "mup+supar", base_width=16, density=0.5).masks
    assert fxparam.plan(_gpt(), fxparam.MuP(base_width=16)).m_d == 2.0
    assert fxparam.plan(_gpt(), "mup", base_width=16, zero_readout=True).m_d == 2.0  # a real bool field
