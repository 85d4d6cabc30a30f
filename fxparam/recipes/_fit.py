"""Fit power laws ``y = C * x1**a1 * x2**a2 ...`` to sweep results, with bootstrap intervals.

Use it to recalibrate the default constants on your own setup, e.g. ``tau_opt = c_tau * TPP**m_tau``
from the best tau of each TPP in a sweep, or ``B_opt = c_b * D**m_b``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from fxparam.errors import RecipeError
from fxparam.recipes._validate import array_1d, number


class PowerLawFit(BaseModel):
    """The result of :func:`fit_power_law` (frozen).

    Attributes:
        coefficient: ``C``.
        exponents: ``a_k``, one per regressor (a single exponent for 1-D ``x``).
        coefficient_ci: bootstrap confidence interval of ``C`` (low, high).
        exponents_ci: bootstrap interval of each exponent.
        confidence: the interval level, e.g. 0.95.
        r2: coefficient of determination of the log-log fit.
        n: number of points.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    coefficient: float
    exponents: tuple[float, ...]
    coefficient_ci: tuple[float, float]
    exponents_ci: tuple[tuple[float, float], ...]
    confidence: float
    r2: float
    n: int

    @property
    def exponent(self) -> float:
        """The exponent of a one-regressor fit."""
        if len(self.exponents) != 1:
            raise RecipeError(
                f"PowerLawFit.exponent: the fit has {len(self.exponents)} exponents; use .exponents"
            )
        return self.exponents[0]

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Evaluate ``C * prod_k x_k**a_k`` (``x`` shaped like the fitted one)."""
        xs = np.asarray(x, dtype=np.float64)
        xs = xs.reshape(-1, 1) if xs.ndim <= 1 and len(self.exponents) == 1 else np.atleast_2d(xs)
        return np.asarray(
            self.coefficient * np.prod(xs ** np.asarray(self.exponents), axis=1), dtype=np.float64
        )


def _lstsq(logx: npt.NDArray[np.float64], logy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    design = np.column_stack([np.ones(len(logy)), logx])
    sol, *_ = np.linalg.lstsq(design, logy, rcond=None)
    return np.asarray(sol, dtype=np.float64)


def fit_power_law(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PowerLawFit:
    """Least-squares fit of ``log y = log C + sum_k a_k log x_k`` with a pairs bootstrap.

    Args:
        x: positive regressor(s): shape ``(n,)`` for one, ``(n, k)`` for several (e.g. TPP and tau).
        y: positive responses, shape ``(n,)``.
        n_bootstrap: bootstrap resamples for the intervals (0 = point estimate only).
        confidence: interval level in (0, 1).
        seed: seed of the bootstrap generator (fits are reproducible).

    Returns:
        A :class:`PowerLawFit`.

    Raises:
        RecipeError: non-positive or non-finite values, mismatched lengths, or too few points
            (at least ``k + 2``) or a regressor that does not vary.

    Example:
        >>> tpp = [10, 20, 40, 80, 160]
        >>> fit = fit_power_law(tpp, [1.084 * t ** -0.527 for t in tpp], n_bootstrap=50)
        >>> round(fit.coefficient, 3), round(fit.exponent, 3)
        (1.084, -0.527)
    """
    where = "fit_power_law"
    ys = array_1d(y, "y", where)
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim == 1:
        xs = xs[:, None]
    if xs.ndim != 2 or xs.shape[0] != ys.size:
        raise RecipeError(
            f"{where}: x must have shape (n,) or (n, k) with n = len(y) = {ys.size}, got {xs.shape}"
        )
    k = xs.shape[1]
    if ys.size < k + 2:
        raise RecipeError(f"{where}: need at least {k + 2} points to fit {k} exponent(s), got {ys.size}")
    if not np.isfinite(xs).all() or (xs <= 0).any() or (ys <= 0).any():
        raise RecipeError(
            f"{where}: x and y must be positive and finite (a power law is fitted in log space)"
        )
    conf = number(confidence, "confidence", where)
    if not 0 < conf < 1:
        raise RecipeError(f"{where}: confidence must be in (0, 1), got {confidence}")
    if int(n_bootstrap) < 0:
        raise RecipeError(f"{where}: n_bootstrap must be >= 0, got {n_bootstrap}")
    logx, logy = np.log(xs), np.log(ys)
    if (np.ptp(logx, axis=0) == 0).any():
        raise RecipeError(
            f"{where}: a regressor does not vary across the points; its exponent is undetermined"
        )
    if np.linalg.matrix_rank(np.column_stack([np.ones(ys.size), logx])) < k + 1:
        raise RecipeError(f"{where}: the regressors are collinear in log space; vary them independently")
    sol = _lstsq(logx, logy)
    resid = logy - np.column_stack([np.ones(ys.size), logx]) @ sol
    ss_tot = float(np.sum((logy - logy.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0

    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(int(n_bootstrap)):
        idx = rng.integers(0, ys.size, ys.size)
        design = np.column_stack([np.ones(ys.size), logx[idx]])
        if np.linalg.matrix_rank(design) < k + 1:
            continue  # degenerate resample (all points equal): skip it
        boots.append(_lstsq(logx[idx], logy[idx]))
    if boots:
        arr = np.array(boots)
        lo, hi = np.quantile(arr, [(1 - conf) / 2, (1 + conf) / 2], axis=0)
    else:
        lo = hi = sol
    return PowerLawFit(
        coefficient=float(np.exp(sol[0])),
        exponents=tuple(float(a) for a in sol[1:]),
        coefficient_ci=(float(np.exp(lo[0])), float(np.exp(hi[0]))),
        exponents_ci=tuple((float(a), float(b)) for a, b in zip(lo[1:], hi[1:], strict=True)),
        confidence=conf,
        r2=r2,
        n=int(ys.size),
    )
