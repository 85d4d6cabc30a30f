"""fit_power_law recovers known exponents from noisy data; its intervals cover the truth."""

from __future__ import annotations

import numpy as np
import pytest

from fxparam.errors import RecipeError
from fxparam.recipes import fit_power_law, tau_opt


def test_recovers_tau_law_from_noisy_sweep() -> None:
    rng = np.random.default_rng(1)
    tpp = np.geomspace(5, 500, 16)
    best_tau = 1.084 * tpp**-0.527 * np.exp(0.05 * rng.standard_normal(tpp.size))  # 5% noise
    fit = fit_power_law(tpp, best_tau, n_bootstrap=300)
    assert fit.exponent == pytest.approx(-0.527, abs=0.04)
    assert fit.coefficient == pytest.approx(1.084, rel=0.15)
    lo, hi = fit.exponents_ci[0]
    assert lo < -0.527 < hi and hi - lo < 0.15
    assert fit.coefficient_ci[0] < 1.084 < fit.coefficient_ci[1]
    assert fit.r2 > 0.95 and fit.n == 16
    # plug the fit back in as overrides
    assert tau_opt(80, c_tau=fit.coefficient, m_tau=fit.exponent) == pytest.approx(tau_opt(80), rel=0.1)


def test_recovers_batch_law_and_two_regressor_law() -> None:
    rng = np.random.default_rng(2)
    d = np.geomspace(1e9, 1e11, 12)
    b = 0.0306 * d**0.383 * np.exp(0.03 * rng.standard_normal(d.size))
    assert fit_power_law(d, b, n_bootstrap=100).exponent == pytest.approx(0.383, abs=0.03)
    # m = C * TPP**mu1 * tau**mu2 (the TREC exponent law), two regressors
    x = np.column_stack([rng.uniform(10, 300, 30), rng.uniform(0.03, 0.5, 30)])
    m = 0.8 * x[:, 0] ** 0.2 * x[:, 1] ** -0.3 * np.exp(0.02 * rng.standard_normal(30))
    fit = fit_power_law(x, m, n_bootstrap=100)
    assert fit.exponents == pytest.approx((0.2, -0.3), abs=0.03)
    assert fit.predict(x) == pytest.approx(m, rel=0.1)
    with pytest.raises(RecipeError, match="2 exponents"):
        _ = fit.exponent


def test_fit_is_reproducible() -> None:
    x, y = [1, 2, 4, 8, 16], [1.0, 1.9, 4.2, 7.7, 16.5]
    assert fit_power_law(x, y, seed=3) == fit_power_law(x, y, seed=3)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1, 2, 3], [1, 2, -3], "positive"),
        ([1, 2, 3], [1, 2], "shape"),
        ([1, 2], [1, 2], "at least 3 points"),
        ([2, 2, 2, 2], [1, 2, 3, 4], "does not vary"),
        ([1, 2, float("nan"), 4], [1, 2, 3, 4], "positive and finite"),
    ],
)
def test_bad_fit_inputs(x: list[float], y: list[float], match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        fit_power_law(x, y, n_bootstrap=10)
