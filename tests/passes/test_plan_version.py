"""Plan schema version 2: typed multiplier tables; version-1 JSON ("input:" keys) is upgraded on load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.errors import PlanError
from fxparam.models import GPT, GPTConfig
from fxparam.plan import PLAN_VERSION, Plan

# A plan as fxparam 0.1 wrote it: one `multipliers` table, the readout's input factor under "input:<fqn>".
V1_JSON = """{
  "version": 1, "fxparam_version": "0.1.0", "passes": ["MuP"], "config": {}, "model_class": "Sequential",
  "width": 8, "base_width": 4, "m_d": 2.0, "depth": 0, "base_depth": null, "m_L": 1.0, "alpha": null,
  "params": {"0.weight": {"role": "hidden"}, "0.bias": {"role": "vector"},
             "2.weight": {"role": "readout"}, "2.bias": {"role": "vector"}},
  "multipliers": {"0": 2.0, "input:2": 0.25},
  "attention": {}, "masks": {}, "norm_swaps": [], "notes": []
}"""


def test_version_1_json_is_upgraded_to_typed_tables() -> None:
    plan = Plan.from_json(V1_JSON)
    assert PLAN_VERSION == 2 and plan.version == 2
    assert plan.output_multipliers == {"0": 2.0}
    assert plan.input_multipliers == {"2": 0.25}
    assert plan.multipliers == {"0": 2.0, "input:2": 0.25}  # the read-only 0.1 view
    saved = json.loads(plan.to_json())
    assert saved["version"] == 2 and "multipliers" not in saved
    assert Plan.from_json(plan.to_json()) == plan


def test_an_upgraded_plan_applies_the_factors_where_version_1_did() -> None:
    """y = W2 (0.25 * relu(2 * (W1 x + b1))) + b2, computed by hand from the weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    w1, b1, w2, b2 = (p.detach().clone() for p in model.parameters())
    x = torch.randn(5, 4)
    fxparam.apply_plan(model, V1_JSON, init=False, example_inputs=(x,))
    want = (0.25 * torch.relu(2.0 * (x @ w1.T + b1))) @ w2.T + b2
    torch.testing.assert_close(model(x), want)


def test_a_fresh_plan_round_trips_through_version_1_json() -> None:
    plan = fxparam.plan(GPT(GPTConfig(width=64, depth=2)), "completep", base_width=32, base_depth=1)
    assert plan.input_multipliers and plan.output_multipliers
    v1 = json.loads(plan.to_json())
    v1["version"] = 1
    v1["multipliers"] = {**v1.pop("output_multipliers"), **{"input:" + k: f for k, f in v1.pop("input_multipliers").items()}}
    assert Plan.from_json(json.dumps(v1)) == plan


def test_a_newer_plan_version_is_refused() -> None:
    data = json.loads(Plan().to_json())
    data["version"] = PLAN_VERSION + 1
    with pytest.raises(PlanError, match="newer than this fxparam"):
        Plan.from_json(json.dumps(data))


def test_multiply_combines_factors_per_table() -> None:
    plan = Plan()
    plan.multiply("head", 0.5, on="input")
    plan.multiply("head", 3.0)
    plan.multiply("input:head", 0.5)  # a 0.1 key still means the input
    plan.multiply("body", 1.0)  # a factor of 1 records nothing
    assert plan.input_multipliers == {"head": 0.25} and plan.output_multipliers == {"head": 3.0}
    assert plan.forward_sites() == {"head", "head (input)"}
