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
from statistics import NormalDist
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
#: Default probability of an alarm on a run within the threshold, given the logs' own noise.
DEFAULT_FALSE_ALARM = 0.01

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
        noise: standard deviation of each ``ell`` point from the log's own noise (``sigma / L(T) /
            sqrt(points averaged)``, see :func:`noise_level`); None when not estimated.
        divisor_noise: relative standard deviation of ``divisor`` from the same noise.
        smooth: the moving-average width in ``t_hat`` the curve was smoothed with.
    """

    t_hat: FloatArray = field(repr=False)
    ell: FloatArray = field(repr=False)
    divisor: float
    total_steps: float
    align: Literal["final", "early", "given"]
    name: str | None = None
    noise: FloatArray | None = field(default=None, repr=False)
    divisor_noise: float = 0.0
    smooth: float = 0.0

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
        threshold: the tolerated drift, in units of ``L(T)``.
        alarm: some ``|residual| > threshold + z * band`` (see :func:`collapse_residual`).
        band: the standard deviation of each residual that the logs' own noise explains.
        z: the multiple of ``band`` allowed on top of ``threshold`` (0 when the noise is not estimated).
        noise: the median of ``band``.
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
    band: FloatArray | None = field(default=None, repr=False)
    z: float = 0.0
    noise: float = 0.0

    def at(self, t: float) -> float:
        """The residual at ``t_hat = t`` (linear interpolation; NaN-free: raises outside the range)."""
        if not self.t_hat[0] - 1e-9 <= t <= self.t_hat[-1] + 1e-9:
            raise RecipeError(
                f"CollapseReport.at: t_hat={t} is outside the evaluated range "
                f"[{self.t_hat[0]:.3f}, {self.t_hat[-1]:.3f}]"
            )
        return float(np.interp(t, self.t_hat, self.residual))


#: Step columns recognised without ``step_column=`` (case-insensitive): plain logs, wandb, Lightning.
STEP_COLUMNS = ("step", "_step", "global_step", "trainer/global_step", "iteration", "iter")


def _pick_column(fields: list[str], wanted: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    lower = {f.strip().lower(): f for f in fields}
    if wanted is not None:
        if wanted in fields:
            return wanted
        if wanted.strip().lower() in lower:
            return lower[wanted.strip().lower()]
        raise RecipeError(f"{where}: no column {wanted!r}; the header has {fields}")
    for c in candidates:
        if c in lower:
            return lower[c]
    if what == "loss":  # e.g. wandb's 'train/loss' (not its 'train/loss__MIN' / '__MAX' companions)
        found = [f for f in fields if "loss" in f.lower() and not f.upper().endswith(("__MIN", "__MAX"))]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise RecipeError(f"{where}: several loss columns {found}; choose one with --column (column=)")
    raise RecipeError(
        f"{where}: need a header with 'step' and 'loss' columns (extra columns are fine; name others with "
        f"--step-column / --column), got {fields}"
    )


#: TensorBoard's CSV export of one scalar tag (the tag chosen when exporting; not in the file).
TENSORBOARD_HEADER = ("wall time", "step", "value")


def _delimiter(header_line: str) -> str:
    """The field delimiter of a header line: ',' if it has one, else a tab, else ';' (spreadsheets
    in locales with a decimal comma export ';'); ',' when none occurs (a one-column file)."""
    for d in (",", "\t", ";"):
        if d in header_line:
            return d
    return ","


def read_loss_csv(
    path: str | Path, *, column: str | Sequence[str] | None = None, step_column: str | None = None
) -> tuple[FloatArray, FloatArray]:
    """Read the step and loss columns of a CSV with a header (other columns are ignored).

    The step column is ``step_column`` or the first of :data:`STEP_COLUMNS`; the loss column is
    ``column``, else ``loss``, else the one column whose name contains "loss" (a wandb export
    ``Step,train/loss,train/loss__MIN,train/loss__MAX`` reads ``train/loss``), else ``Value`` in a
    TensorBoard export (header ``Wall time,Step,Value``: one scalar, the one exported). Rows whose
    loss cell is empty (metrics logged at other steps) are skipped. Fields are separated by
    commas, tabs or semicolons (whichever the header line uses, in that order). Rows in another
    order (newest first) are sorted by step when no step repeats.

    Args:
        path: the CSV file.
        column: the loss column's name (case-insensitive), or several names: the first that the
            header has (one option serving logs from different tools).
        step_column: the step column's name (case-insensitive).

    Returns:
        ``(steps, losses)``, float arrays of equal length.

    Raises:
        RecipeError: missing file or columns, several candidate loss columns, non-numeric /
            non-finite values, or a step logged twice (deduplicate resumed logs first).

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
    with p.open(newline="", encoding="utf-8-sig") as fh:
        delimiter = _delimiter(fh.readline())
        fh.seek(0)
        reader = csv.DictReader(fh, delimiter=delimiter)
        fields = list(reader.fieldnames or [])
        step_key = _pick_column(fields, step_column, STEP_COLUMNS, "step", where)
        if column is not None and not isinstance(column, str):
            names = list(column)
            have = {f.strip().lower() for f in fields}
            column = next((c for c in names if c.strip().lower() in have), names[0] if len(names) == 1 else None)
            if column is None:
                raise RecipeError(f"{where}: none of the columns {names} (--column); the header has {fields}")
        if column is None and tuple(f.strip().lower() for f in fields) == TENSORBOARD_HEADER:
            column = fields[2]  # TensorBoard: the exported scalar
        loss_key = _pick_column(fields, column, ("loss",), "loss", where)
        steps, losses = [], []
        for row_no, row in enumerate(reader, start=2):
            s, v = (row.get(step_key) or "").strip(), (row.get(loss_key) or "").strip()
            if not v:
                continue  # a blank line, or a row where this metric was not logged
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
    st, ls = np.asarray(steps), np.asarray(losses)
    if np.unique(st).size == st.size and (np.diff(st) < 0).any():
        # rows out of order (an export sorted newest first): each step once, so the order carries no
        # information; sorted here (review R17b: was "deduplicate resumed logs", not the cause)
        order = np.argsort(st, kind="stable")
        st, ls = st[order], ls[order]
    bad = np.diff(st) <= 0
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise RecipeError(
            f"{where}: steps must strictly increase, but step {st[i]:g} follows {st[i - 1]:g}; "
            "deduplicate resumed logs (keep the latest entry per step)"
        )
    return st, ls


def noise_level(losses: npt.ArrayLike) -> float:
    """Relative noise of a loss log, estimated from the log itself (0 when it has < 5 points).

    A loss log is a smooth curve plus noise. The second difference ``x[i-1] - 2 x[i] + x[i+1]`` of
    ``x = log(loss)`` removes the smooth part (up to its curvature, small for a densely logged run)
    and leaves white noise of variance ``6 sigma^2``; its median absolute deviation (times 1.4826)
    is a robust estimate of that standard deviation, unmoved by a few spikes or early transients.

    Returns:
        ``sigma``: the relative standard deviation of one logged loss (0.01 = 1% noise).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> t = np.linspace(0.01, 1, 2000)
        >>> round(noise_level((2 + 1 / t) * (1 + 0.01 * rng.standard_normal(2000))), 3)
        0.01
    """
    x = np.log(np.asarray(losses, dtype=np.float64))
    if x.size < 5 or not np.all(np.isfinite(x)):
        return 0.0
    d2 = x[:-2] - 2 * x[1:-1] + x[2:]
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


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


def _window_counts(t: FloatArray, width: float) -> FloatArray:
    """How many logged points each smoothed point averages."""
    if width == 0:
        return np.ones_like(t)
    lo = np.searchsorted(t, t - width / 2, side="left")
    hi = np.searchsorted(t, t + width / 2, side="right")
    return (hi - lo).astype(np.float64)


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
    sigma = noise_level(losses)
    counts = _window_counts(t, non_negative(smooth, "smooth", where))
    ell = sm / div
    if how == "final":
        div_noise = sigma / math.sqrt(counts[-1])
    elif how == "early":
        lo, hi = window
        div_noise = sigma / math.sqrt(max(1, int(((t >= lo) & (t <= hi)).sum())))
    else:
        div_noise = 0.0
    return NormalisedCurve(t_hat=t, ell=ell, divisor=div, total_steps=total, align=how, name=name,
                           noise=sigma * ell / np.sqrt(counts), divisor_noise=div_noise, smooth=float(smooth))


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


#: The latest stop :func:`unfinished_run` considers: a horizon within ~5% of the last logged step is
#: not told apart from a drift at the end (the fitted L(T) absorbs either).
MAX_FRACTION = 0.95


@dataclass(frozen=True)
class UnfinishedRun:
    """A run read as complete that drifts, but collapses when read as the first part of a longer run.

    Attributes:
        name: the run's label.
        last_step: its last logged step (the ``T`` of the complete reading).
        fraction: ``f``, the training fraction its last step is at under the best partial reading
            (at most :data:`MAX_FRACTION`).
        total_steps: the horizon that reading implies, ``last_step / f`` (an estimate: the run's
            planned total is what the user must give).
        as_complete: the residual report of the complete reading (it alarms).
        as_partial: the report of the partial reading (it does not alarm).
    """

    name: str | None
    last_step: float
    fraction: float
    total_steps: float
    as_complete: CollapseReport = field(repr=False)
    as_partial: CollapseReport = field(repr=False)


def unfinished_run(
    steps: npt.ArrayLike,
    losses: npt.ArrayLike,
    reference: NormalisedCurve,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    t_min: float = DEFAULT_T_MIN,
    smooth: float = DEFAULT_SMOOTH,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    min_fraction: float = 0.2,
    name: str | None = None,
) -> UnfinishedRun | None:
    """Whether a log given without its horizon looks like an unfinished run: a test of two readings.

    A log's horizon ``T`` is not in the log. Read as complete (``T`` = last logged step, ``L(T)``
    its final smoothed loss), a run that is still training is compared with the reference's end
    while it is in the reference's middle, and drifts by construction. The loss's slope at the end
    does not tell the two apart (a decay-to-zero run falls *fastest* at its end, so a run stopped
    halfway falls *less* steeply on collapse axes than a finished one); the reference's whole shape
    does. Both readings are tested against the reference (the collapse hypothesis, Scaling with
    Collapse, arXiv 2509.25087): the complete one, and for each fraction ``f`` in
    ``[min_fraction, MAX_FRACTION]`` the partial one with ``T = last_step / f`` and ``L(T)``
    least-squares aligned to the reference over ``t_hat in [t_min, f]`` (:func:`normalise_curve`,
    ``align="early"``); the ``f`` of least RMS residual is refined by golden section. The run looks
    unfinished when the complete reading alarms, with its final loss as ``L(T)`` and with ``L(T)``
    fitted the same way (``f = 1``: a drift at the end is not blamed on the horizon), and the best
    partial reading does not alarm (same ``threshold`` and noise-aware ``false_alarm`` as
    :func:`collapse_residual`). A complete run that collapses is never flagged; a
    complete run that drifts is flagged only if it matches a truncated reference within the threshold
    (e.g. a run with a much smaller tau, whose LR-decay drop is shallower): then only the user knows
    which is true, and must say so.

    Args:
        steps, losses: the log (steps strictly increasing).
        reference: a complete normalised reference run (same schedule shape, TPP, tau).
        threshold, t_min, false_alarm: as in :func:`collapse_residual`.
        smooth: as in :func:`normalise_curve`.
        min_fraction: the earliest stop considered (a run logged to 20% of its horizon shares
            little more than the initial power law with the reference).
        name: a label.

    Returns:
        An :class:`UnfinishedRun` when the run looks unfinished, else None.

    Raises:
        RecipeError: bad logs (as :func:`normalise_curve`) or ``min_fraction`` outside ``(t_min, 1)``.

    Example:
        >>> t = np.linspace(0.002, 1, 500)
        >>> ref = normalise_curve(1000 * t, (1 + 0.05 / (t + 0.02)) * (1 + 0.08 * (1 - t)), name="ref")
        >>> half = t <= 0.5  # the first half of a 4000-step run of the same shape
        >>> u = unfinished_run(4000 * t[half], 2 * (1 + 0.05 / (t[half] + 0.02)) * (1 + 0.08 * (1 - t[half])), ref)
        >>> round(u.total_steps, -2)
        4000.0
    """
    where = f"unfinished_run({name!r})" if name else "unfinished_run"
    st = array_1d(steps, "steps", where, min_len=2)
    fmin = number(min_fraction, "min_fraction", where)
    if not t_min < fmin < 1:
        raise RecipeError(f"{where}: min_fraction must lie in (t_min={t_min}, 1), got {min_fraction}")
    kw = {"threshold": threshold, "t_min": t_min, "false_alarm": false_alarm}
    complete = collapse_residual(normalise_curve(st, losses, smooth=smooth, name=name), reference, **kw)
    if not complete.alarm:
        return None
    last = float(st[-1])

    def partial(f: float) -> CollapseReport | None:
        t = st / (last / f)
        if int(((t >= t_min) & (t <= f)).sum()) < 3:
            return None
        try:
            c = normalise_curve(st, losses, total_steps=last / f, align="early", reference=reference,
                                window=(t_min, f), smooth=smooth, name=name)
            return collapse_residual(c, reference, **kw)
        except RecipeError:
            return None

    def rms(f: float) -> float:
        rep = partial(f)
        return math.inf if rep is None else rep.rms

    # the partial reading fits L(T) over the whole log, a freedom the complete reading (L(T) = its final
    # loss) lacks: a drift near the end can hide in it. So the complete reading gets the same freedom
    # (f = 1, L(T) fitted); when that collapses, the horizon is not what is wrong: no refusal.
    at_end = partial(1.0)
    if at_end is None or not at_end.alarm:
        return None
    grid = np.geomspace(fmin, MAX_FRACTION, 60)
    errs = [rms(float(f)) for f in grid]
    i = int(np.argmin(errs))
    if not math.isfinite(errs[i]):
        return None
    a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, grid.size - 1)])
    for _ in range(30):
        x1, x2 = b - 0.618 * (b - a), a + 0.618 * (b - a)
        if rms(x1) <= rms(x2):
            b = x2
        else:
            a = x1
    f_best = (a + b) / 2
    rep = partial(f_best)
    if rep is None or rep.alarm:
        return None
    return UnfinishedRun(name=name, last_step=last, fraction=f_best, total_steps=last / f_best,
                         as_complete=complete, as_partial=rep)


def collapse_residual(
    curve: NormalisedCurve,
    reference: NormalisedCurve,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    t_min: float = DEFAULT_T_MIN,
    false_alarm: float = DEFAULT_FALSE_ALARM,
) -> CollapseReport:
    """Residual ``ell_run - ell_ref`` of a normalised run against a reference, with an alarm.

    Noise is not drift: each log's own noise (:func:`noise_level`, carried by
    :func:`normalise_curve`) gives every residual a standard deviation ``band`` (run and
    reference points, and both divisors, independent). The alarm fires when some
    ``|residual| > threshold + z * band`` with ``z`` the two-sided normal quantile at
    ``false_alarm / N`` for ``N`` independent comparisons (Bonferroni; smoothed residuals less
    than one smoothing window apart average the same log points, so ``N`` is the judged span
    divided by the window, at most the number of points): a run whose true drift stays within
    ``threshold`` raises it with probability at most about ``false_alarm``. Curves without a
    noise estimate (built by hand) are judged on ``threshold`` alone.

    Args:
        curve: the run (from :func:`normalise_curve`).
        reference: the reference run (e.g. a smaller model trained with matched schedule, TPP, tau).
        threshold: the tolerated drift, in units of the final loss (0.01 = 1%).
        t_min: ignore ``t_hat < t_min`` (initial transients).
        false_alarm: the probability of an alarm on a run that drifts by less than ``threshold``.

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
    if not 0 < false_alarm < 1:
        raise RecipeError(f"{where}: false_alarm is a probability in (0, 1), got {false_alarm}")
    t = curve.t_hat[sel]
    ref_ell = np.interp(t, reference.t_hat, reference.ell)
    r = curve.ell[sel] - ref_ell
    run_noise = curve.noise[sel] if curve.noise is not None else np.zeros_like(t)
    ref_noise = np.interp(t, reference.t_hat, reference.noise) if reference.noise is not None else 0.0
    band = np.sqrt(
        run_noise**2 + ref_noise**2 + (curve.ell[sel] * curve.divisor_noise) ** 2
        + (ref_ell * reference.divisor_noise) ** 2
    )
    # smoothed residuals less than a window apart are nearly the same test: count windows, not points
    window = max(curve.smooth, reference.smooth)
    n_tests = min(t.size, max(1, math.ceil((t[-1] - t[0]) / window))) if window > 0 else t.size
    z = NormalDist().inv_cdf(1 - false_alarm / (2 * n_tests)) if band.max() > 0 else 0.0
    excess = np.abs(r) - (thr + z * band)
    i = int(np.argmax(np.abs(r)))
    return CollapseReport(
        name=curve.name,
        t_hat=t,
        residual=r,
        max_abs=float(abs(r[i])),
        t_at_max=float(t[i]),
        rms=float(np.sqrt(np.mean(r**2))),
        threshold=thr,
        alarm=bool((excess > 0).any()),
        divisor=curve.divisor,
        align=curve.align,
        band=band,
        z=float(z),
        noise=float(np.median(band)),
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
    false_alarm: float = DEFAULT_FALSE_ALARM,
) -> Path:
    """Write a collapse plot (PNG): normalised curves on top, residuals vs the reference below.

    Below, each run's residual is drawn with its alarm level ``threshold + z * band`` (dotted,
    :func:`collapse_residual`; ``false_alarm`` as there): a residual outside the grey
    ``threshold`` but inside its dotted lines is within the logs' noise.

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
    # the y range covers every curve *and* the reference: a partial run stops above 1 while the
    # reference goes on down to 1 at t = 1, and must stay visible there
    shown = [*curves, *([reference] if reference is not None else [])]
    lows = [float(np.min(c.ell[c.t_hat >= t_min])) for c in shown if (c.t_hat >= t_min).any()]
    lo = min(lows) if lows else 1.0
    top.set_ylim(lo - 0.02, lo + 0.5)
    top.set_xlim(0, 1.0)
    top.legend(fontsize=8)
    top.set_title(title or "Loss-curve collapse")
    if reference is not None:
        bot = axes[1]
        for i, c in enumerate(curves):
            rep = collapse_residual(c, reference, threshold=threshold, t_min=t_min, false_alarm=false_alarm)
            (line,) = bot.plot(
                rep.t_hat,
                rep.residual,
                lw=1.2,
                label=(c.name or f"run {i}") + (" ALARM" if rep.alarm else ""),
            )
            if rep.band is not None and rep.z * float(np.max(rep.band)) > 0:  # review R17b: the level that alarms
                level = threshold + rep.z * rep.band
                bot.plot(rep.t_hat, level, ":", lw=0.9, color=line.get_color())
                bot.plot(rep.t_hat, -level, ":", lw=0.9, color=line.get_color(),
                         label=f"{c.name or f'run {i}'}: alarm level (threshold + {rep.z:.2f} x noise)")
        bot.axhspan(-threshold, threshold, color="0.85", zorder=0, label=f"threshold {threshold:g}")
        bot.axhline(0, color="k", lw=0.8)
        bot.set_ylabel("residual vs reference")
        bot.legend(fontsize=8)
    axes[-1].set_xlabel("training fraction t / T")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out
