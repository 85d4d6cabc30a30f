"""Loss-curve collapse (Bergsma et al., *Scaling with Collapse*, arXiv 2509.25087).

Normalise a loss log to the training fraction ``t_hat = t/T`` and ``ell = L(t)/L(T)``; runs whose
schedule shape, TPP and tau match collapse onto one curve, so a run that drifts from a reference
signals a problem. Mid-run, ``L(T)`` is unknown: "early align" picks the divisor that best matches
the reference over ``t_hat in [0.25, 0.5]``, which is also a forecast of the final loss.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from fxparam.errors import RecipeError
from fxparam.recipes._constants import COLLAPSE_EPS1, COLLAPSE_EPS2, COLLAPSE_M
from fxparam.recipes._validate import array_1d, non_negative, number, positive
from fxparam.recipes.schedules import Schedule

#: Default smoothing: a centred moving average ``smooth`` wide in t_hat (2% of the run).
DEFAULT_SMOOTH = 0.02
#: Default early-align window in t_hat (Scaling with Collapse).
ALIGN_WINDOW = (0.25, 0.5)
#: Default alarm threshold on |ell_run - ell_ref| (1% of the final loss).
DEFAULT_THRESHOLD = 0.01
#: Residuals are not judged before this t_hat by default (initial transients do not collapse).
DEFAULT_T_MIN = 0.1

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class NormalisedCurve:
    """A loss curve on collapse axes.

    Attributes:
        t_hat: ``step / total_steps``.
        ell: smoothed loss divided by ``divisor``.
        divisor: ``L(T)``: the final smoothed loss (``align="final"``), the early-aligned forecast
            (``"early"``) or a value given by the caller (``"given"``).
        total_steps: the run's planned number of steps ``T``.
        align: how ``divisor`` was obtained.
        name: a label (e.g. the file name).
    """

    t_hat: FloatArray = field(repr=False)
    ell: FloatArray = field(repr=False)
    divisor: float
    total_steps: float
    align: Literal["final", "early", "given"]
    name: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the log reaches the planned last step."""
        return bool(self.t_hat[-1] >= 1.0 - 1e-12)


@dataclass(frozen=True)
class CollapseReport:
    """Residual of a run against a reference curve, and the alarm.

    Attributes:
        name: the run's label.
        t_hat: where the residual was evaluated (run points with ``t_min <= t_hat``, inside the reference).
        residual: ``ell_run - ell_ref`` at those points.
        max_abs: ``max |residual|``.
        t_at_max: ``t_hat`` where it occurs.
        rms: root-mean-square residual.
        threshold: alarm threshold on ``max_abs``.
        alarm: ``max_abs > threshold``.
        divisor: the run's ``L(T)`` (a forecast when ``align == "early"``).
        align: how the divisor was obtained.
    """

    name: str | None
    t_hat: FloatArray = field(repr=False)
    residual: FloatArray = field(repr=False)
    max_abs: float
    t_at_max: float
    rms: float
    threshold: float
    alarm: bool
    divisor: float
    align: str

    def at(self, t: float) -> float:
        """The residual at ``t_hat = t`` (linear interpolation; NaN-free: raises outside the range)."""
        if not self.t_hat[0] - 1e-9 <= t <= self.t_hat[-1] + 1e-9:
            raise RecipeError(
                f"CollapseReport.at: t_hat={t} is outside the evaluated range "
                f"[{self.t_hat[0]:.3f}, {self.t_hat[-1]:.3f}]"
            )
        return float(np.interp(t, self.t_hat, self.residual))


def read_loss_csv(path: str | Path) -> tuple[FloatArray, FloatArray]:
    """Read ``step`` and ``loss`` columns from a CSV with a header (other columns are ignored).

    Raises:
        RecipeError: missing file or columns, non-numeric / non-finite values, or steps that do not
            strictly increase (deduplicate resumed logs first).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "run.csv")
        >>> _ = open(p, "w").write("step,loss,lr\\n1,3.0,1e-3\\n2,2.5,1e-3\\n")
        >>> read_loss_csv(p)[1].tolist()
        [3.0, 2.5]
    """
    p = Path(path)
    where = f"read_loss_csv({str(p)!r})"
    if not p.is_file():
        raise RecipeError(f"{where}: no such file")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "step" not in fields or "loss" not in fields:
            raise RecipeError(
                f"{where}: need a header with 'step' and 'loss' columns (extra columns are fine), "
                f"got {reader.fieldnames}"
            )
        reader.fieldnames = fields
        steps, losses = [], []
        for row_no, row in enumerate(reader, start=2):
            s, v = (row.get("step") or "").strip(), (row.get("loss") or "").strip()
            if not s and not v:
                continue
            try:
                step, loss = float(s), float(v)
            except ValueError:
                raise RecipeError(f"{where}: line {row_no}: step={s!r}, loss={v!r} are not numbers") from None
            if not (math.isfinite(step) and math.isfinite(loss)):
                raise RecipeError(f"{where}: line {row_no}: non-finite step or loss ({s}, {v}); fix the log")
            steps.append(step)
            losses.append(loss)
    if len(steps) < 2:
        raise RecipeError(f"{where}: need at least 2 rows of step,loss; got {len(steps)}")
    st = np.asarray(steps)
    bad = np.diff(st) <= 0
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise RecipeError(
            f"{where}: steps must strictly increase, but step {st[i]:g} follows {st[i - 1]:g}; "
            "deduplicate resumed logs (keep the latest entry per step)"
        )
    return st, np.asarray(losses)


def smooth_curve(t_hat: npt.ArrayLike, values: npt.ArrayLike, width: float = DEFAULT_SMOOTH) -> FloatArray:
    """Centred moving average over a window ``width`` wide in ``t_hat`` (truncated at the ends).

    Example:
        >>> smooth_curve([0.0, 0.5, 1.0], [1.0, 2.0, 3.0], width=1.0).tolist()
        [1.5, 2.0, 2.5]
    """
    where = "smooth_curve"
    t = array_1d(t_hat, "t_hat", where)
    v = array_1d(values, "values", where)
    if t.size != v.size:
        raise RecipeError(f"{where}: t_hat and values differ in length ({t.size} vs {v.size})")
    w = non_negative(width, "width", where)
    if w == 0:
        return v.copy()
    half = w / 2
    lo = np.searchsorted(t, t - half, side="left")
    hi = np.searchsorted(t, t + half, side="right")
    csum = np.concatenate([[0.0], np.cumsum(v)])
    return (csum[hi] - csum[lo]) / (hi - lo)


def _prepare(
    steps: npt.ArrayLike, losses: npt.ArrayLike, total_steps: float | None, smooth: float, where: str
) -> tuple[FloatArray, FloatArray, float]:
    st = array_1d(steps, "steps", where, min_len=2)
    ls = array_1d(losses, "losses", where, min_len=2)
    if st.size != ls.size:
        raise RecipeError(f"{where}: steps and losses differ in length ({st.size} vs {ls.size})")
    if (np.diff(st) <= 0).any():
        raise RecipeError(f"{where}: steps must strictly increase")
    if (ls <= 0).any():
        raise RecipeError(f"{where}: losses must be positive to be normalised by a ratio")
    total = float(st[-1]) if total_steps is None else positive(total_steps, "total_steps", where)
    if st[-1] > total * (1 + 1e-9):
        raise RecipeError(
            f"{where}: the log goes to step {st[-1]:g}, past total_steps={total:g}; pass the planned total"
        )
    if st[0] < 0:
        raise RecipeError(f"{where}: steps must be >= 0")
    t = st / total
    return t, smooth_curve(t, ls, smooth), total


def _early_divisor(
    t: FloatArray, smoothed: FloatArray, reference: NormalisedCurve, window: tuple[float, float], where: str
) -> float:
    lo, hi = (number(v, "window", where) for v in window)
    if not 0 <= lo < hi <= 1:
        raise RecipeError(f"{where}: the align window must satisfy 0 <= lo < hi <= 1, got {window}")
    sel = (t >= lo) & (t <= hi) & (t >= reference.t_hat[0]) & (t <= reference.t_hat[-1])
    if sel.sum() < 3:
        raise RecipeError(
            f"{where}: early align needs at least 3 logged points with t_hat in [{lo}, {hi}] covered by the "
            f"reference; the run has {int(sel.sum())} (it reached t_hat = {t[-1]:.3f}). Log more often or "
            "wait until the run has passed the window"
        )
    loss, ref = smoothed[sel], np.interp(t[sel], reference.t_hat, reference.ell)
    # Least squares in u = 1/L(T): minimise sum (u * L_i - ell_ref_i)^2.
    u = float(np.dot(loss, ref) / np.dot(loss, loss))
    return 1.0 / u


def normalise_curve(
    steps: npt.ArrayLike,
    losses: npt.ArrayLike,
    *,
    total_steps: float | None = None,
    align: Literal["final", "early"] = "final",
    reference: NormalisedCurve | None = None,
    divisor: float | None = None,
    smooth: float = DEFAULT_SMOOTH,
    window: tuple[float, float] = ALIGN_WINDOW,
    name: str | None = None,
) -> NormalisedCurve:
    """Put a loss log on collapse axes: ``t_hat = step/T``, ``ell = smoothed L / L(T)``.

    Args:
        steps, losses: the log (steps strictly increasing).
        total_steps: the planned number of steps T (default: the last logged step).
        align: ``"final"`` divides by the final smoothed loss (needs a complete run); ``"early"``
            chooses the divisor that best matches ``reference`` over ``window`` (works mid-run).
        reference: the reference curve for ``align="early"``.
        divisor: use this ``L(T)`` instead (overrides ``align``).
        smooth: moving-average width in t_hat (0 = none).
        window: the early-align window (default ``(0.25, 0.5)``).
        name: a label carried into reports and plots.

    Raises:
        RecipeError: ``align="final"`` on a partial run, ``"early"`` without a reference, or bad logs.

    Example:
        >>> c = normalise_curve([1, 2, 3, 4], [4.0, 3.0, 2.5, 2.0], smooth=0)
        >>> c.ell.tolist(), c.divisor
        ([2.0, 1.5, 1.25, 1.0], 2.0)
    """
    where = f"normalise_curve({name!r})" if name else "normalise_curve"
    t, sm, total = _prepare(steps, losses, total_steps, smooth, where)
    how: Literal["final", "early", "given"]
    if divisor is not None:
        div, how = positive(divisor, "divisor", where), "given"
    elif align == "early":
        if reference is None:
            raise RecipeError(f"{where}: align='early' needs reference= (a normalised reference curve)")
        div, how = _early_divisor(t, sm, reference, window, where), "early"
    elif align == "final":
        if t[-1] < 1.0 - 1e-9:
            raise RecipeError(
                f"{where}: the log stops at step {t[-1] * total:g} of {total:g}, so L(T) is unknown; use "
                "align='early' with a reference (or total_steps=None if the run is complete)"
            )
        div, how = float(sm[-1]), "final"
    else:
        raise RecipeError(f"{where}: align must be 'final' or 'early', got {align!r}")
    return NormalisedCurve(t_hat=t, ell=sm / div, divisor=div, total_steps=total, align=how, name=name)


def forecast_final_loss(
    steps: npt.ArrayLike,
    losses: npt.ArrayLike,
    reference: NormalisedCurve,
    *,
    total_steps: float,
    smooth: float = DEFAULT_SMOOTH,
    window: tuple[float, float] = ALIGN_WINDOW,
) -> float:
    """Forecast a run's final loss ``L(T)`` from its partial log by early alignment to a reference.

    Args:
        steps, losses: the log so far (it must have passed ``window``).
        reference: a complete normalised run with the same schedule shape, TPP and tau.
        total_steps: the planned number of steps T.
        smooth, window: as in :func:`normalise_curve`.

    Example:
        >>> t = np.linspace(0, 1, 101)
        >>> ref = normalise_curve(100 * t, 2.0 + 1.0 / (1 + 10 * t), smooth=0)  # final loss 2.0909
        >>> steps = np.arange(0, 501, 10)  # the first half of a 1000-step run at 1.5x the loss
        >>> losses = 1.5 * (2.0 + 1.0 / (1 + 10 * steps / 1000))
        >>> round(forecast_final_loss(steps, losses, ref, total_steps=1000, smooth=0), 4)
        3.1364
    """
    curve = normalise_curve(
        steps,
        losses,
        total_steps=total_steps,
        align="early",
        reference=reference,
        smooth=smooth,
        window=window,
    )
    return curve.divisor


def collapse_residual(
    curve: NormalisedCurve,
    reference: NormalisedCurve,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    t_min: float = DEFAULT_T_MIN,
) -> CollapseReport:
    """Residual ``ell_run - ell_ref`` of a normalised run against a reference, with an alarm.

    Args:
        curve: the run (from :func:`normalise_curve`).
        reference: the reference run (e.g. a smaller model trained with matched schedule, TPP, tau).
        threshold: alarm when ``max |residual| > threshold`` (units of the final loss; 0.01 = 1%).
        t_min: ignore ``t_hat < t_min`` (initial transients).

    Example:
        >>> ref = normalise_curve([1, 2, 3, 4], [4.0, 3.0, 2.5, 2.0], smooth=0)
        >>> run = normalise_curve([2, 4, 6, 8], [8.0, 6.0, 5.0, 4.0], smooth=0)
        >>> collapse_residual(run, ref).alarm
        False
    """
    where = f"collapse_residual({curve.name!r})" if curve.name else "collapse_residual"
    thr = positive(threshold, "threshold", where)
    tmin = non_negative(t_min, "t_min", where)
    sel = (curve.t_hat >= tmin) & (curve.t_hat >= reference.t_hat[0]) & (curve.t_hat <= reference.t_hat[-1])
    if not sel.any():
        raise RecipeError(
            f"{where}: no point of the run lies in t_hat >= {tmin} within the reference's range "
            f"[{reference.t_hat[0]:.3f}, {reference.t_hat[-1]:.3f}]"
        )
    t = curve.t_hat[sel]
    r = curve.ell[sel] - np.interp(t, reference.t_hat, reference.ell)
    i = int(np.argmax(np.abs(r)))
    return CollapseReport(
        name=curve.name,
        t_hat=t,
        residual=r,
        max_abs=float(abs(r[i])),
        t_at_max=float(t[i]),
        rms=float(np.sqrt(np.mean(r**2))),
        threshold=thr,
        alarm=bool(abs(r[i]) > thr),
        divisor=curve.divisor,
        align=curve.align,
    )


def _lr_shape_fn(
    lr_shape: Schedule | str | Callable[[FloatArray], FloatArray], where: str
) -> Callable[[FloatArray], FloatArray]:
    if isinstance(lr_shape, str):
        raise RecipeError(
            f"{where}: pass a Schedule (make_schedule({lr_shape!r}, total_steps=...)), not a name"
        )
    if isinstance(lr_shape, Schedule):
        vals = lr_shape.values()
        peak = vals.max()
        if peak <= 0:
            raise RecipeError(f"{where}: the schedule is zero everywhere")
        n = lr_shape.total_steps

        def fn(t: FloatArray) -> FloatArray:
            idx = np.clip(np.ceil(np.asarray(t) * n).astype(int) - 1, 0, n - 1)
            return vals[idx] / peak

        return fn
    if callable(lr_shape):
        return lr_shape
    raise RecipeError(f"{where}: lr_shape must be a Schedule or a callable t_hat -> normalised LR")


def collapse_surrogate(
    t_hat: npt.ArrayLike,
    lr_shape: Schedule | Callable[[FloatArray], FloatArray],
    *,
    b: float,
    q: float,
    m: float = COLLAPSE_M,
    eps1: float = COLLAPSE_EPS1,
    eps2: float = COLLAPSE_EPS2,
) -> FloatArray:
    """The collapse surrogate ``((1+e1)/(t+e1))**m + b*(eta_hat(t)+e2)**q``, normalised to 1 at t = 1.

    ``b = b0 * tau**b1`` and ``q = q0 * TPP**q1`` must be fitted (see :func:`fit_collapse_surrogate`
    per run, then :func:`fit_power_law` across runs); m, e1, e2 default to the paper's 0.05, 0.001, 0.1.

    Args:
        t_hat: training fractions in [0, 1].
        lr_shape: the schedule (a :class:`~fxparam.recipes.schedules.Schedule`) or a callable giving the LR
            normalised to peak 1 at given ``t_hat``.
        b, q: the surrogate's LR-term weight and power.
        m, eps1, eps2: overrides of the default constants.

    Example:
        >>> from fxparam.recipes.schedules import make_schedule
        >>> s = make_schedule("d2z", total_steps=100)
        >>> round(float(collapse_surrogate([1.0], s, b=0.5, q=1.0)[0]), 6)
        1.0
    """
    where = "collapse_surrogate"
    t = array_1d(t_hat, "t_hat", where)
    if (t < 0).any() or (t > 1 + 1e-9).any():
        raise RecipeError(f"{where}: t_hat must lie in [0, 1]")
    bb = non_negative(b, "b", where)
    qq, mm = number(q, "q", where), number(m, "m", where)
    e1, e2 = positive(eps1, "eps1", where), positive(eps2, "eps2", where)
    eta = _lr_shape_fn(lr_shape, where)

    def raw(x: FloatArray) -> FloatArray:
        return ((1 + e1) / (x + e1)) ** mm + bb * (np.asarray(eta(x), dtype=np.float64) + e2) ** qq

    return raw(t) / raw(np.array([1.0]))[0]


def fit_collapse_surrogate(
    curve: NormalisedCurve,
    lr_shape: Schedule | Callable[[FloatArray], FloatArray],
    *,
    t_min: float = DEFAULT_T_MIN,
    q_range: tuple[float, float] = (0.05, 5.0),
    m: float = COLLAPSE_M,
    eps1: float = COLLAPSE_EPS1,
    eps2: float = COLLAPSE_EPS2,
) -> tuple[float, float]:
    """Fit the surrogate's ``(b, q)`` to one normalised run (grid over q, least squares in b).

    Fit several runs, then ``fit_power_law(taus, bs)`` gives ``(b0, b1)`` and
    ``fit_power_law(tpps, qs)`` gives ``(q0, q1)``.

    Example:
        >>> from fxparam.recipes.schedules import make_schedule
        >>> s = make_schedule("d2z", total_steps=200)
        >>> t = (1 + np.arange(200)) / 200
        >>> c = NormalisedCurve(t, collapse_surrogate(t, s, b=0.4, q=0.8), 1.0, 200, "given")
        >>> [round(v, 2) for v in fit_collapse_surrogate(c, s)]
        [0.4, 0.8]
    """
    where = "fit_collapse_surrogate"
    sel = curve.t_hat >= non_negative(t_min, "t_min", where)
    if sel.sum() < 4:
        raise RecipeError(f"{where}: need at least 4 points with t_hat >= {t_min}")
    t, ell = curve.t_hat[sel], curve.ell[sel]
    eta = _lr_shape_fn(lr_shape, where)
    e1, e2 = positive(eps1, "eps1", where), positive(eps2, "eps2", where)
    mm = number(m, "m", where)
    big_p = ((1 + e1) / (t + e1)) ** mm
    eta_t = np.asarray(eta(t), dtype=np.float64)
    eta_1 = float(np.asarray(eta(np.array([1.0])))[0])
    lo, hi = (positive(v, "q_range", where) for v in q_range)

    def solve(q: float) -> tuple[float, float]:
        big_q, q1 = (eta_t + e2) ** q, (eta_1 + e2) ** q
        # ell * (1 + b*q1) = P + b*Q  ->  b * (ell*q1 - Q) = P - ell  (P(1) = 1)
        a, y = ell * q1 - big_q, big_p - ell
        den = float(np.dot(a, a))
        b = max(0.0, float(np.dot(a, y) / den)) if den > 0 else 0.0
        pred = (big_p + b * big_q) / (1 + b * q1)
        return b, float(np.sum((pred - ell) ** 2))

    grid = np.geomspace(lo, hi, 200)
    errs = [solve(float(q))[1] for q in grid]
    i = int(np.argmin(errs))
    a_, b_ = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, grid.size - 1)])
    for _ in range(60):
        x1, x2 = b_ - 0.618 * (b_ - a_), a_ + 0.618 * (b_ - a_)
        if solve(float(np.exp(x1)))[1] <= solve(float(np.exp(x2)))[1]:
            b_ = x2
        else:
            a_ = x1
    q_best = float(np.exp((a_ + b_) / 2))
    return solve(q_best)[0], q_best


def collapse_plot(
    curves: Sequence[NormalisedCurve],
    path: str | Path,
    *,
    reference: NormalisedCurve | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    t_min: float = DEFAULT_T_MIN,
    title: str | None = None,
) -> Path:
    """Write a collapse plot (PNG): normalised curves on top, residuals vs the reference below.

    Needs matplotlib (``pip install 'fxparam[plot]'``); it is imported only here.

    Example:
        >>> import tempfile, os
        >>> c = normalise_curve([1, 2, 3, 4], [4.0, 3.0, 2.5, 2.0], smooth=0, name="run")
        >>> collapse_plot([c], os.path.join(tempfile.mkdtemp(), "c.png"), reference=c).suffix
        '.png'
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RecipeError(
            "collapse_plot: matplotlib is not installed; install the plot extra: pip install 'fxparam[plot]'"
        ) from None
    out = Path(path)
    if not out.parent.exists():
        raise RecipeError(f"collapse_plot: the folder {str(out.parent)!r} does not exist")
    nrows = 2 if reference is not None else 1
    fig = Figure(figsize=(7, 6 if nrows == 2 else 4))
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0]
    top = axes[0]
    for i, c in enumerate(curves):
        label = (c.name or f"run {i}") + (" (L(T) forecast)" if c.align == "early" else "")
        top.plot(c.t_hat, c.ell, lw=1.2, label=label)
    if reference is not None:
        top.plot(reference.t_hat, reference.ell, "k--", lw=1.5, label=f"reference: {reference.name or 'ref'}")
    top.set_ylabel("L(t) / L(T)")
    lo = (
        min(float(np.min(c.ell[c.t_hat >= t_min])) for c in curves if (c.t_hat >= t_min).any())
        if curves
        else 1.0
    )
    top.set_ylim(lo - 0.02, lo + 0.5)
    top.legend(fontsize=8)
    top.set_title(title or "Loss-curve collapse")
    if reference is not None:
        bot = axes[1]
        for i, c in enumerate(curves):
            rep = collapse_residual(c, reference, threshold=threshold, t_min=t_min)
            bot.plot(
                rep.t_hat,
                rep.residual,
                lw=1.2,
                label=(c.name or f"run {i}") + (" ALARM" if rep.alarm else ""),
            )
        bot.axhspan(-threshold, threshold, color="0.85", zorder=0)
        bot.axhline(0, color="k", lw=0.8)
        bot.set_ylabel("residual vs reference")
        bot.legend(fontsize=8)
    axes[-1].set_xlabel("training fraction t / T")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out
