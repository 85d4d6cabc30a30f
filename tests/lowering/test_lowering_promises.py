"""The eager lowering's promises are checked with LoweringError (not ``assert``: they hold under ``python -O``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import fxparam.lowering.eager as eager
from fxparam.errors import LoweringError
from fxparam.plan import PLAN_ATTR, ParamPlan, Plan


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.inp(x)))


def _plan(model: nn.Module) -> Plan:
    params = {n: ParamPlan(role="hidden") for n, _ in model.named_parameters()}
    return Plan(params=params, output_multipliers={"inp": 2.0}, input_multipliers={"out": 0.5})


def _break_with(monkeypatch: pytest.MonkeyPatch, breaker) -> None:
    real = eager.prepare_weights

    def broken(model: nn.Module, plan: Plan, *, init: bool) -> None:
        real(model, plan, init=init)
        breaker(model)

    monkeypatch.setattr(eager, "prepare_weights", broken)


def test_an_intact_lowering_passes_the_checks() -> None:
    model = _Net()
    ids = [id(p) for p in model.parameters()]
    eager.lower_eager(model, _plan(model), init=False)
    assert [id(p) for p in model.parameters()] == ids and getattr(model, PLAN_ATTR) is not None


def test_a_replaced_parameter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _break_with(monkeypatch, lambda m: setattr(m.inp, "weight", nn.Parameter(m.inp.weight.detach().clone())))
    model = _Net()
    with pytest.raises(LoweringError, match=r"replaced Parameter.*inp\.weight"):
        eager.lower_eager(model, _plan(model), init=False)
    assert getattr(model, PLAN_ATTR, None) is None  # the plan is recorded only after the checks


def test_a_new_state_dict_key_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _break_with(monkeypatch, lambda m: m.out.register_buffer("extra", torch.zeros(1)))
    model = _Net()
    with pytest.raises(LoweringError, match=r"changed the state_dict keys.*out\.extra"):
        eager.lower_eager(model, _plan(model), init=False)


def test_the_checks_hold_under_python_O() -> None:
    """The same broken invariant raises in an interpreter that strips ``assert`` statements."""
    code = (
        "import torch.nn as nn, fxparam.lowering.eager as e\n"
        "from fxparam.errors import LoweringError\n"
        "from fxparam.plan import ParamPlan, Plan\n"
        "assert False, 'asserts are on'\n"  # stripped by -O: proves the flag took effect
        "m = nn.Sequential(nn.Linear(2, 2))\n"
        "real = e.prepare_weights\n"
        "def broken(model, plan, *, init):\n"
        "    real(model, plan, init=init); model[0].weight = nn.Parameter(model[0].weight.detach().clone())\n"
        "e.prepare_weights = broken\n"
        "plan = Plan(params={n: ParamPlan(role='hidden') for n, _ in m.named_parameters()})\n"
        "try:\n"
        "    e.lower_eager(m, plan, init=False)\n"
        "except LoweringError:\n"
        "    print('raised')\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "raised"
