"""The recipe of docs/internals.md, followed once: a new parameterization is one config class,
one pass and this test file - no other place in fxparam is edited.

The toy parameterization divides the readout's logits by a temperature ``T`` (an input
multiplier ``1/T`` on the readout: the readout has no bias, so logits scale by exactly
``1/T``).  The fixture defines it, so it is registered only while these tests run.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterator
from typing import Literal

import pytest
import torch
from pydantic import Field

import fxparam
from fxparam.analysis import Analysis
from fxparam.cli import build_parser
from fxparam.cli._common import param_list
from fxparam.cli.coord_check import base_kwargs as cli_base_kwargs
from fxparam.cli.coord_check import expects
from fxparam.configs import (
    ParamConfig,
    base_kwargs,
    config_from_json,
    config_names,
    resolve_config,
    unregister_config,
)
from fxparam.errors import ConfigError
from fxparam.models import GPT, GPTConfig
from fxparam.passes import register_pass, unregister_pass
from fxparam.plan import Plan

T = 2.0


@pytest.fixture
def toy() -> Iterator[type[ParamConfig]]:
    # 1. the config: its `kind` is its name; its required fields are what callers must pass
    class ReadoutTemperature(ParamConfig):
        """Readout logits divided by a temperature (a toy parameterization)."""

        kind: Literal["readouttemp"] = "readouttemp"
        temperature: float = Field(..., gt=0, description="T: the readout's logits are divided by T")

    # 2. the pass: (Analysis, config, Plan) -> Plan
    @register_pass(ReadoutTemperature)
    def readout_temperature(analysis: Analysis, cfg: ReadoutTemperature, plan: Plan) -> Plan:
        for module in sorted({p.module for p in analysis.params.values() if p.role == "readout"}):
            plan.multiply(module, 1.0 / cfg.temperature, on="input")
        plan.notes.append(f"ReadoutTemperature: logits / {cfg.temperature}")
        return plan

    yield ReadoutTemperature
    unregister_pass(ReadoutTemperature)
    unregister_config(ReadoutTemperature)


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(width=32, depth=2))


def test_the_name_shortcut_builds_the_plan_and_transforms(toy: type[ParamConfig]) -> None:
    base = _gpt()
    model = copy.deepcopy(base)
    plan = fxparam.plan(model, "readouttemp", temperature=T)
    assert plan.input_multipliers == {"lm_head": 1 / T} and not plan.output_multipliers
    assert plan.passes == ["ReadoutTemperature"]
    fxparam.transform(model, "readouttemp", temperature=T, init=False)
    idx = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(model(idx), base(idx) / T)  # bias-free readout: logits / T exactly


def test_it_composes_with_mup_and_its_config_round_trips(toy: type[ParamConfig]) -> None:
    cfg = resolve_config("mup+readouttemp", base_width=16, temperature=T)
    plan = fxparam.plan(_gpt(), cfg)
    assert plan.input_multipliers["lm_head"] == pytest.approx((16 / 32) / T)  # alpha_out/m_d, then 1/T
    assert config_from_json(plan.config) == cfg
    assert config_from_json(json.dumps(plan.config)) == cfg


def test_name_lists_and_base_keywords_see_it(toy: type[ParamConfig]) -> None:
    assert "readouttemp" in config_names()
    assert param_list("sp,readouttemp,mup+readouttemp") == ["sp", "readouttemp", "mup+readouttemp"]
    assert base_kwargs("readouttemp", temperature=T, base_width=64) == {"temperature": T}
    assert cli_base_kwargs("mup+readouttemp", 64, 2) == {"base_width": 64}
    assert expects("readouttemp") == {"width": False, "depth": False}  # no base_width/base_depth field
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "readouttemp" in " ".join(sub.choices["inspect"].format_help().split())  # `fxparam inspect --plan`
    with pytest.raises(ConfigError, match="temperature is required"):
        resolve_config("readouttemp")


def test_without_the_registration_the_name_is_unknown() -> None:
    assert "readouttemp" not in config_names()
    with pytest.raises(ConfigError, match="unknown parameterization 'readouttemp'"):
        resolve_config("readouttemp", temperature=T)


def test_a_second_config_with_a_taken_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="two configs are named 'mup'"):

        class Impostor(ParamConfig):
            kind: Literal["mup"] = "mup"
