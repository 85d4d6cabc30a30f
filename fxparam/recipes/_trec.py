"""Predicted training re-evaluation curves (TREC; Bergsma, Dey, Hestness, arXiv 2509.25380).

``L_re(t)`` is the final model's loss on the batch seen at step t; its valley is where training
data is retained best. The shape model is ``L_re(t_hat) = 1 - c(t_hat)**p * t_hat**m`` with
``c`` the (normalised) EMA coefficient of step t's update in the final weights, p = 0.5 and m
given or fitted (``m = C * TPP**mu1 * tau**mu2``; no published constants). The output is a *shape*,
compared by correlation, not an absolute loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from fxparam.errors import RecipeError
from fxparam.recipes._constants import TREC_P
from fxparam.recipes._ema import ema_profile
from fxparam.recipes._validate import array_1d, number, positive
from fxparam.recipes.schedules import Schedule, make_schedule


class Window(BaseModel):
    """A candidate window of updates ``[start, stop)`` (0-based) and its retention score.

    Attributes:
        start, stop: update indices; the segment would be seen during updates ``start .. stop-1``.
        t_start, t_stop: the same as fractions of the run.
        score: sum of the EMA coefficients ``c_{T,i}`` over the window (weight kept in the final model).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int
    stop: int
    t_start: float
    t_stop: float
    score: float


def rank_windows(
    coefficients: npt.ArrayLike, window_steps: int, *, stride: int | None = None, top: int | None = None
) -> list[Window]:
    """Rank windows of ``window_steps`` updates by the EMA weight the final model keeps of them.

    Args:
        coefficients: ``c_{T,i}`` for each update (e.g. ``ema_profile(...).coefficients``).
        window_steps: length of the data segment in updates.
        stride: distance between candidate starts (default ``max(1, window_steps // 10)``); the window
            ending at the last update is always a candidate.
        top: keep only the best ``top`` windows.

    Returns:
        Windows sorted best first (largest score).

    Example:
        >>> [w.start for w in rank_windows([0.1, 0.3, 0.4, 0.2], 2, stride=1)]
        [1, 2, 0]
    """
    where = "rank_windows"
    c = array_1d(coefficients, "coefficients", where)
    n = c.size
    if isinstance(window_steps, bool) or int(window_steps) != window_steps or not 1 <= window_steps <= n:
        raise RecipeError(
            f"{where}: window_steps must be an integer in [1, {n}] (the run length), got {window_steps}"
        )
    w = int(window_steps)
    s = max(1, w // 10) if stride is None else int(stride)
    if s < 1:
        raise RecipeError(f"{where}: stride must be >= 1, got {stride}")
    csum = np.concatenate([[0.0], np.cumsum(c)])
    starts = sorted(set(range(0, n - w + 1, s)) | {n - w})
    scores = [(float(csum[i + w] - csum[i]), i) for i in starts]
    scores.sort(key=lambda x: (-x[0], x[1]))
    if top is not None:
        scores = scores[: max(0, int(top))]
    return [Window(start=i, stop=i + w, t_start=i / n, t_stop=(i + w) / n, score=sc) for sc, i in scores]


@dataclass(frozen=True)
class TRECPrediction:
    """A predicted training re-evaluation curve (a shape; compare by correlation).

    Attributes:
        t_hat: ``t/T`` for updates ``t = 1..T``.
        curve: ``1 - c_hat**p * t_hat**m`` with ``c_hat = c / max(c)``.
        coefficients: the raw EMA coefficients ``c_{T,t}`` of each update.
        m, p: the exponents used.
    """

    t_hat: npt.NDArray[np.float64] = field(repr=False)
    curve: npt.NDArray[np.float64] = field(repr=False)
    coefficients: npt.NDArray[np.float64] = field(repr=False)
    m: float
    p: float

    @property
    def valley_index(self) -> int:
        """0-based update index of the curve's minimum (where data is retained best)."""
        return int(np.argmin(self.curve))

    @property
    def valley(self) -> float:
        """``t_hat`` of the curve's minimum."""
        return float(self.t_hat[self.valley_index])

    def rank_windows(
        self, window_steps: int, *, stride: int | None = None, top: int | None = None
    ) -> list[Window]:
        """:func:`rank_windows` over this run's EMA coefficients."""
        return rank_windows(self.coefficients, window_steps, stride=stride, top=top)


def _trec_coefficients(mults: npt.NDArray[np.float64], tau: float, where: str) -> npt.NDArray[np.float64]:
    steps = mults.size
    if tau * steps < 1:
        raise RecipeError(
            f"{where}: tau * T = {tau * steps:.3g} < 1 update: eta*lambda > 1, the decay overshoots; "
            "tau is a fraction of the run, e.g. 0.1"
        )
    # tau = 1/(eta*lambda*T), so alpha_t = multiplier_t * eta * lambda = multiplier_t / (tau * T).
    return ema_profile(mults / (tau * steps), 1.0).coefficients


def _shape(
    c: npt.NDArray[np.float64], t_hat: npt.NDArray[np.float64], m: float, p: float
) -> npt.NDArray[np.float64]:
    cmax = c.max()
    chat = c / cmax if cmax > 0 else c
    return 1.0 - chat**p * t_hat**m


def _multipliers(
    schedule: Schedule | str | npt.ArrayLike, total_steps: int | None, where: str
) -> npt.NDArray[np.float64]:
    if isinstance(schedule, (Schedule, str)):
        sched = make_schedule(schedule, total_steps=total_steps) if isinstance(schedule, str) else schedule
        return sched.values()
    mults = array_1d(schedule, "schedule multipliers", where)
    if (mults < 0).any():
        raise RecipeError(f"{where}: schedule multipliers must be >= 0")
    return mults


def predict_trec(
    schedule: Schedule | str | npt.ArrayLike,
    *,
    tau: float,
    m: float | None = None,
    tpp: float | None = None,
    m_law: tuple[float, float, float] | None = None,
    p: float = TREC_P,
    total_steps: int | None = None,
) -> TRECPrediction:
    """Predict the TREC shape for a schedule, an AdamW timescale and an exponent ``m``.

    Args:
        schedule: a :class:`~fxparam.recipes.schedules.Schedule`, a name (with ``total_steps``) or an array
            of per-update LR multipliers.
        tau: the AdamW timescale as a fraction of the run (see :func:`tau`); ``alpha_t =
            multiplier_t / (tau * T)``.
        m: the ``t_hat`` exponent, if known (e.g. from :func:`fit_trec_exponent`).
        tpp, m_law: alternatively ``m = C * tpp**mu1 * tau**mu2`` with ``m_law = (C, mu1, mu2)``
            fitted on your own runs (no constants are published).
        p: the ``c`` exponent (0.5, TREC paper).
        total_steps: updates, when ``schedule`` is a name.

    Raises:
        RecipeError: neither ``m`` nor ``(tpp, m_law)`` given, or bad values.

    Example:
        >>> pred = predict_trec("d2z", total_steps=1000, tau=0.1, m=0.3)
        >>> 0.5 < pred.valley < 1.0
        True
    """
    where = "predict_trec"
    mults = _multipliers(schedule, total_steps, where)
    t = positive(tau, "tau", where, "tau is a fraction of the run, e.g. 0.1")
    pp = positive(p, "p", where)
    if m is None:
        if m_law is None or tpp is None:
            raise RecipeError(
                f"{where}: give m= (e.g. from fit_trec_exponent on a measured TREC), or tpp= and "
                "m_law=(C, mu1, mu2) for m = C * TPP**mu1 * tau**mu2; no default constants are published"
            )
        c0, mu1, mu2 = (number(v, "m_law", where) for v in m_law)
        mm = c0 * positive(tpp, "tpp", where) ** mu1 * t**mu2
    else:
        mm = number(m, "m", where)
    if not np.isfinite(mm) or mm < 0:
        raise RecipeError(f"{where}: m must be a finite number >= 0, got {mm}")
    c = _trec_coefficients(mults, t, where)
    t_hat = np.arange(1, c.size + 1) / c.size
    return TRECPrediction(t_hat=t_hat, curve=_shape(c, t_hat, mm, pp), coefficients=c, m=float(mm), p=pp)


def fit_trec_exponent(
    t_hat: npt.ArrayLike,
    losses: npt.ArrayLike,
    schedule: Schedule | str | npt.ArrayLike,
    *,
    tau: float,
    p: float = TREC_P,
    total_steps: int | None = None,
    m_range: tuple[float, float] = (1e-3, 20.0),
) -> tuple[float, float]:
    """Fit ``m`` to a measured re-evaluation curve by maximising the Pearson correlation.

    Args:
        t_hat: fractions of the run at which the re-evaluation losses were measured.
        losses: the final model's loss on the batch seen at each ``t_hat``.
        schedule, tau, p, total_steps: as in :func:`predict_trec`.
        m_range: search interval for ``m`` (log-spaced grid, then refined).

    Returns:
        ``(m, correlation)``.

    Example:
        >>> pred = predict_trec("d2z", total_steps=500, tau=0.2, m=0.4)
        >>> m, r = fit_trec_exponent(pred.t_hat, pred.curve, "d2z", total_steps=500, tau=0.2)
        >>> round(m, 2), r > 0.999
        (0.4, True)
    """
    where = "fit_trec_exponent"
    th = array_1d(t_hat, "t_hat", where, min_len=3)
    y = array_1d(losses, "losses", where, min_len=3)
    if th.size != y.size:
        raise RecipeError(f"{where}: t_hat and losses differ in length ({th.size} vs {y.size})")
    if (th <= 0).any() or (th > 1).any():
        raise RecipeError(f"{where}: t_hat must be in (0, 1] (step / total steps)")
    if np.ptp(y) == 0:
        raise RecipeError(f"{where}: the measured losses are constant; nothing to fit")
    mults = _multipliers(schedule, total_steps, where)
    c = _trec_coefficients(mults, positive(tau, "tau", where), where)
    grid_t = np.arange(1, c.size + 1) / c.size
    c_at = np.interp(th, grid_t, c)
    pp = positive(p, "p", where)
    lo, hi = (positive(v, "m_range", where) for v in m_range)

    def corr(mm: float) -> float:
        pred = _shape(c_at, th, mm, pp)
        if np.ptp(pred) == 0:
            return -1.0
        return float(np.corrcoef(pred, y)[0, 1])

    grid = np.geomspace(lo, hi, 200)
    vals = [corr(g) for g in grid]
    i = int(np.argmax(vals))
    a, b = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, grid.size - 1)])
    for _ in range(60):  # golden-section refinement in log m
        x1, x2 = b - 0.618 * (b - a), a + 0.618 * (b - a)
        if corr(float(np.exp(x1))) >= corr(float(np.exp(x2))):
            b = x2
        else:
            a = x1
    best = float(np.exp((a + b) / 2))
    return best, corr(best)
