"""AdamW as an EMA: coefficients are a convex combination, per group, for any schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxparam.errors import RecipeError
from fxparam.recipes import ema_profile, group_ema_profiles
from fxparam.recipes.schedules import Schedule, make_schedule

from .test_recipes_schedules import any_schedule


@settings(max_examples=60, deadline=None)
@given(sched=any_schedule(), peak_alpha=st.floats(0.0, 1.0))
def test_coefficients_are_non_negative_and_sum_to_one(sched: Schedule, peak_alpha: float) -> None:
    prof = ema_profile(sched.values() * peak_alpha, weight_decay=1.0)
    assert (prof.coefficients >= 0).all()
    assert 0.0 <= prof.initial_weight <= 1.0
    assert prof.initial_weight + prof.coefficients.sum() == pytest.approx(1.0, abs=1e-9)
    assert prof.effective_updates >= 1.0 - 1e-9 or math.isinf(prof.effective_updates)


def test_closed_form_for_constant_alpha() -> None:
    a, n = 0.01, 500
    prof = ema_profile(np.full(n, a), weight_decay=1.0)
    i = np.arange(1, n + 1)
    np.testing.assert_allclose(prof.coefficients, a * (1 - a) ** (n - i), rtol=1e-12)
    assert prof.initial_weight == pytest.approx((1 - a) ** n)


def test_d2z_averages_more_updates_than_constant() -> None:
    """Decaying the LR flattens late coefficients: more updates averaged (variance reduction)."""
    n, peak = 2000, 2e-3
    d2z = ema_profile(peak * make_schedule("d2z", total_steps=n, warmup_steps=0).values(), 1.0)
    const = ema_profile(peak * make_schedule("constant", total_steps=n).values(), 1.0)
    assert d2z.effective_updates > 1.5 * const.effective_updates
    assert d2z.initial_weight > const.initial_weight  # less area under the schedule: less bias removed


def test_per_group_profiles_use_each_groups_lr_and_decay() -> None:
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.AdamW(
        [
            {"params": [a], "lr": 1e-3},
            {"params": [b], "lr": 8e-3},
            {"params": [c], "lr": 8e-3, "weight_decay": 0.0},
        ],
        weight_decay=0.1,
    )
    sched = make_schedule("d2z", total_steps=300)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, sched)  # sets initial_lr; group lr is now the warmup value
    profs = group_ema_profiles(opt, lam)
    for prof, lr in zip(profs[:2], (1e-3, 8e-3), strict=True):
        expect = ema_profile(lr * sched.values(), 0.1)
        np.testing.assert_allclose(prof.coefficients, expect.coefficients)
        assert prof.peak_lr == pytest.approx(lr)
    assert not profs[2].decays
    assert profs[2].initial_weight == 1.0 and math.isinf(profs[2].effective_updates)
    assert profs[1].initial_weight < profs[0].initial_weight  # faster decay forgets more of theta_0
    same = group_ema_profiles(opt, "d2z", total_steps=300)  # a name evaluates the same schedule
    np.testing.assert_allclose(same[0].coefficients, profs[0].coefficients)


def test_bad_inputs() -> None:
    with pytest.raises(RecipeError, match="overshoots"):
        ema_profile([0.5, 3.0], weight_decay=1.0)
    with pytest.raises(RecipeError, match="negative"):
        ema_profile([0.1, -0.1], weight_decay=1.0)
    with pytest.raises(RecipeError, match="lrs\\[1\\]"):
        ema_profile([0.1, float("nan")], weight_decay=1.0)
    with pytest.raises(RecipeError, match="weight_decay"):
        ema_profile([0.1], weight_decay=-1.0)
    w = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(RecipeError, match="AdamW"):
        group_ema_profiles(torch.optim.Adam([w], lr=1e-3, weight_decay=0.1), "d2z", total_steps=10)
    with pytest.raises(RecipeError, match="total_steps"):
        group_ema_profiles(torch.optim.AdamW([w], lr=1e-3), lambda t: 1.0)
