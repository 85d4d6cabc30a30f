"""TREC: predicted shape, its valley, window ranking, fitting m."""

from __future__ import annotations

import numpy as np
import pytest

from fxparam.errors import RecipeError
from fxparam.recipes import ema_profile, fit_trec_exponent, predict_trec, rank_windows
from fxparam.recipes.schedules import make_schedule


def test_shape_follows_the_formula() -> None:
    sched = make_schedule("d2z", total_steps=400)
    pred = predict_trec(sched, tau=0.2, m=0.3)
    c = ema_profile(sched.values() / (0.2 * 400), 1.0).coefficients  # alpha_t = multiplier / (tau T)
    t = np.arange(1, 401) / 400
    np.testing.assert_allclose(pred.curve, 1 - (c / c.max()) ** 0.5 * t**0.3)
    np.testing.assert_allclose(pred.coefficients, c)


def test_valley_is_interior_for_d2z_and_at_the_end_for_constant() -> None:
    d2z = predict_trec("d2z", total_steps=1000, tau=0.1, m=0.3)
    const = predict_trec("constant", total_steps=1000, tau=0.1, m=0.3)
    assert 0.5 < d2z.valley < 0.98  # D2Z's last updates have ~0 weight: data there is not retained
    assert const.valley == 1.0
    # a longer timescale averages more: the valley moves earlier
    assert predict_trec("d2z", total_steps=1000, tau=0.5, m=0.3).valley < d2z.valley


def test_rank_windows_orders_by_retained_weight() -> None:
    pred = predict_trec("d2z", total_steps=1000, tau=0.1, m=0.3)
    ranked = pred.rank_windows(100, stride=10)
    scores = [w.score for w in ranked]
    assert scores == sorted(scores, reverse=True)
    best = ranked[0]
    assert best.score == pytest.approx(pred.coefficients[best.start : best.stop].sum())
    assert best.stop < 1000  # not the very end under D2Z
    const = predict_trec("constant", total_steps=1000, tau=0.1, m=0.3)
    assert const.rank_windows(100, top=1)[0].stop == 1000  # constant LR: the most recent data wins
    with pytest.raises(RecipeError, match="window_steps"):
        rank_windows(pred.coefficients, 0)


def test_fit_m_recovers_exponent_from_noisy_curve() -> None:
    rng = np.random.default_rng(0)
    pred = predict_trec("d2z", total_steps=800, tau=0.15, m=0.6)
    idx = np.arange(10, 800, 20)
    observed = 3.0 + 0.5 * pred.curve[idx] + 0.002 * rng.standard_normal(idx.size)  # arbitrary affine scale
    m, r = fit_trec_exponent(pred.t_hat[idx], observed, "d2z", total_steps=800, tau=0.15)
    assert m == pytest.approx(0.6, rel=0.1)
    assert r > 0.99


def test_m_from_law_and_missing_m() -> None:
    pred = predict_trec("d2z", total_steps=200, tau=0.2, tpp=50, m_law=(0.5, 0.1, -0.2))
    assert pred.m == pytest.approx(0.5 * 50**0.1 * 0.2**-0.2)
    with pytest.raises(RecipeError, match="give m="):
        predict_trec("d2z", total_steps=200, tau=0.2)
    with pytest.raises(RecipeError, match="tau"):
        predict_trec("d2z", total_steps=200, tau=0.0, m=0.3)
    with pytest.raises(RecipeError, match="overshoots"):
        predict_trec("d2z", total_steps=200, tau=0.001, m=0.3)
