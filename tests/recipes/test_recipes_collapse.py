"""Loss-curve collapse on synthetic curves from the surrogate: collapse, alarms, forecast, fits, plot."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fxparam.errors import RecipeError
from fxparam.recipes import (
    NormalisedCurve,
    collapse_plot,
    collapse_residual,
    collapse_surrogate,
    fit_collapse_surrogate,
    fit_power_law,
    forecast_final_loss,
    normalise_curve,
    read_loss_csv,
)
from fxparam.recipes.schedules import make_schedule

# Surrogate law constants for the synthetic "truth" (the paper publishes none): b = B0 tau^B1, q = Q0 TPP^Q1.
B0, B1, Q0, Q1 = 0.5, 0.6, 1.0, -0.1
TPP = 80.0


def synthetic_run(
    total_steps: int,
    final_loss: float,
    tau: float,
    *,
    seed: int,
    noise: float = 0.003,
    log_every: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A loss log L(t) = L(T) * surrogate(t/T) * (1 + noise), D2Z with 10% warmup."""
    rng = np.random.default_rng(seed)
    sched = make_schedule("d2z", total_steps=total_steps)
    steps = np.arange(0, total_steps + 1, log_every or max(1, total_steps // 500))[1:]
    ell = collapse_surrogate(steps / total_steps, sched, b=B0 * tau**B1, q=Q0 * TPP**Q1)
    return steps, final_loss * ell * (1 + noise * rng.standard_normal(steps.size))


@pytest.fixture(scope="module")
def reference() -> NormalisedCurve:
    """The small model: 2,000 steps, final loss 3.2, matched tau and TPP."""
    return normalise_curve(*synthetic_run(2000, 3.2, 0.1, seed=0), name="small")


@pytest.mark.parametrize(
    ("total_steps", "final_loss", "seed"), [(5000, 2.9, 1), (12000, 2.6, 2), (30000, 2.3, 3)]
)
def test_matched_runs_collapse_below_threshold(
    reference: NormalisedCurve, total_steps: int, final_loss: float, seed: int
) -> None:
    run = normalise_curve(*synthetic_run(total_steps, final_loss, 0.1, seed=seed))
    rep = collapse_residual(run, reference, threshold=0.01)
    assert not rep.alarm, rep
    assert rep.max_abs < 0.01
    assert run.divisor == pytest.approx(final_loss, rel=0.01)


def test_mid_run_perturbation_is_flagged(reference: NormalisedCurve) -> None:
    steps, losses = synthetic_run(12000, 2.6, 0.1, seed=4)
    bump = 1 + 0.03 * np.exp(-((((steps / 12000) - 0.6) / 0.05) ** 2))  # a 3% loss spike around 60%
    rep = collapse_residual(normalise_curve(steps, losses * bump), reference)
    assert rep.alarm
    assert rep.t_at_max == pytest.approx(0.6, abs=0.05)
    # negative control: the same run without the spike passes
    assert not collapse_residual(normalise_curve(steps, losses), reference).alarm


@pytest.mark.parametrize("tau", [0.03, 0.4])
def test_mismatched_tau_is_flagged(reference: NormalisedCurve, tau: float) -> None:
    run = normalise_curve(*synthetic_run(12000, 2.6, tau, seed=5))
    assert collapse_residual(run, reference).alarm


@pytest.mark.parametrize(("stop", "seed"), [(0.5, 6), (0.3, 7)])
def test_early_align_forecasts_final_loss_within_one_percent(
    reference: NormalisedCurve, stop: float, seed: int
) -> None:
    steps, losses = synthetic_run(20000, 2.4, 0.1, seed=seed)
    part = steps <= stop * 20000
    forecast = forecast_final_loss(steps[part], losses[part], reference, total_steps=20000)
    assert forecast == pytest.approx(2.4, rel=0.01)
    curve = normalise_curve(steps[part], losses[part], total_steps=20000, align="early", reference=reference)
    assert curve.align == "early" and not curve.complete
    assert not collapse_residual(curve, reference).alarm


def test_surrogate_fit_recovers_b_q_and_the_laws_across_runs() -> None:
    taus, tpps, bs, qs = [], [], [], []
    for tau, tpp in [(0.05, 20), (0.1, 80), (0.2, 40), (0.4, 200), (0.08, 300)]:
        sched = make_schedule("d2z", total_steps=1000)
        t = np.arange(1, 1001) / 1000
        ell = collapse_surrogate(t, sched, b=B0 * tau**B1, q=Q0 * tpp**Q1)
        b, q = fit_collapse_surrogate(NormalisedCurve(t, ell, 1.0, 1000, "given"), sched)
        taus.append(tau), tpps.append(tpp), bs.append(b), qs.append(q)
    fb, fq = fit_power_law(taus, bs, n_bootstrap=0), fit_power_law(tpps, qs, n_bootstrap=0)
    assert (fb.coefficient, fb.exponent) == pytest.approx((B0, B1), rel=0.02)
    assert (fq.coefficient, fq.exponent) == pytest.approx((Q0, Q1), rel=0.02, abs=0.005)


def test_normalise_is_divide_by_final_and_smooths() -> None:
    steps = np.arange(1, 1001)
    losses = 2.0 + 1.0 / np.sqrt(steps) + 0.01 * np.random.default_rng(0).standard_normal(1000)
    raw = normalise_curve(steps, losses, smooth=0)
    assert raw.ell[-1] == 1.0 and raw.divisor == losses[-1]
    sm = normalise_curve(steps, losses)
    assert np.std(np.diff(sm.ell)) < 0.2 * np.std(np.diff(raw.ell))
    assert sm.divisor == pytest.approx(2.0 + 1 / np.sqrt(1000), abs=0.005)


def test_collapse_plot_writes_png(tmp_path, reference: NormalisedCurve) -> None:  # type: ignore[no-untyped-def]
    run = normalise_curve(*synthetic_run(5000, 2.9, 0.1, seed=8), name="mid")
    out = collapse_plot([run], tmp_path / "c.png", reference=reference)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_collapse_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, reference) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(RecipeError, match=r"fxparam\[plot\]"):
        collapse_plot([reference], tmp_path / "c.png")


def test_read_loss_csv_tolerates_extra_columns_and_rejects_bad_logs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.csv"
    good.write_text("lr,Step,loss,tokens\n1e-3,10,3.5,100\n1e-3,20,3.1,200\n\n")
    steps, losses = read_loss_csv(good)
    assert steps.tolist() == [10, 20] and losses.tolist() == [3.5, 3.1]
    cases = {
        "step,val\n1,2\n2,3\n": "'step' and 'loss'",
        "step,loss\n1,2\n1,3\n": "strictly increase",
        "step,loss\n1,2\n2,nan\n": "non-finite",
        "step,loss\n1,2\n2,abc\n": "not numbers",
        "step,loss\n1,2\n": "at least 2 rows",
    }
    for i, (text, match) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.csv"
        p.write_text(text)
        with pytest.raises(RecipeError, match=match):
            read_loss_csv(p)
    with pytest.raises(RecipeError, match="no such file"):
        read_loss_csv(tmp_path / "missing.csv")


def test_bad_collapse_inputs(reference: NormalisedCurve) -> None:
    steps, losses = synthetic_run(1000, 3.0, 0.1, seed=9)
    with pytest.raises(RecipeError, match="align='early'"):
        normalise_curve(steps[:300], losses[:300], total_steps=1000)  # partial run, final unknown
    with pytest.raises(RecipeError, match="needs reference"):
        normalise_curve(steps, losses, align="early")
    with pytest.raises(RecipeError, match="at least 3 logged points"):
        forecast_final_loss(steps[:100], losses[:100], reference, total_steps=1000)  # not yet at t=0.25
    with pytest.raises(RecipeError, match="past total_steps"):
        normalise_curve(steps, losses, total_steps=500)
    with pytest.raises(RecipeError, match="positive"):
        normalise_curve(steps, -losses)
    with pytest.raises(RecipeError, match="threshold"):
        collapse_residual(reference, reference, threshold=0)
