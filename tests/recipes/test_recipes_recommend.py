"""recommend(): defaults from the laws, per-group LRs, warnings, JSON round-trip."""

from __future__ import annotations

import math

import pytest

from fxparam.recipes import LawConstants, Recipe, recommend, tau_opt


def test_default_recipe_follows_the_laws() -> None:
    r = recommend(params=610e6, tokens=48.5e9, seq_len=2048, base_lr=1.62e-2, width_multiplier=8)
    assert r.batch_size == round(r.b_opt)
    assert r.batch_tokens == r.batch_size * 2048
    assert r.steps == round(48.5e9 / r.batch_tokens)
    assert r.weight_decay == pytest.approx(r.lambda_opt)
    assert r.tau == pytest.approx(r.tau_opt) == pytest.approx(tau_opt(48.5e9 / 610e6))
    assert r.warmup_steps == round(0.1 * r.steps) == r.schedule.warmup_steps
    assert r.schedule.kind == "linear" and r.schedule.final_fraction == 0.0  # D2Z
    groups = {g.name: g for g in r.groups}
    assert groups["hidden"].lr == pytest.approx(2.025e-3)
    assert groups["embedding"].lr == pytest.approx(1.62e-2)
    assert math.isinf(groups["vector"].tau) and groups["vector"].weight_decay == 0
    assert groups["hidden"].tau == pytest.approx(r.tau)
    assert not r.warnings


def test_lr_and_tpp_inputs_are_equivalent_to_base_lr_and_tokens() -> None:
    a = recommend(params=610e6, tokens=48.5e9, base_lr=1.62e-2, width_multiplier=8)
    b = recommend(params=610e6, tpp=48.5e9 / 610e6, lr=2.025e-3, width_multiplier=8)
    for field in ("lr", "tpp", "batch_size", "steps", "weight_decay", "tau", "tau_opt", "b_opt"):
        assert getattr(a, field) == pytest.approx(getattr(b, field)), field
    assert [g.lr for g in a.groups] == pytest.approx([g.lr for g in b.groups])


def test_warns_when_tau_is_far_from_optimum_and_overrides_apply() -> None:
    r = recommend(params=610e6, tokens=48.5e9, lr=2.025e-3, batch_size=504, weight_decay=0.5)
    assert any("far from tau_opt" in w for w in r.warnings)
    k = LawConstants(c_tau=0.87)  # Celerity-like coefficient
    r2 = recommend(params=610e6, tokens=48.5e9, lr=2.025e-3, constants=k)
    assert r2.tau_opt == pytest.approx(0.87 * (48.5e9 / 610e6) ** -0.527)
    assert r2.constants.c_tau == 0.87
    assert "tau" in r.table() and "warning" in r.table()


@pytest.mark.parametrize("model", [Recipe, LawConstants])
def test_configs_round_trip_through_json(model: type) -> None:
    obj = (
        recommend(params=1e8, tokens=2e9, lr=1e-3, b_crit_coefficient=50.0)
        if model is Recipe
        else LawConstants(m_tau=-0.5)
    )
    again = model.model_validate_json(obj.model_dump_json())
    assert again == obj
