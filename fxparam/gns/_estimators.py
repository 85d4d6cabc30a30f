"""Unbiased gradient-noise-scale estimators and their smoothing (McCandlish et al. 2018, App. A).

Notation: ``B`` examples per step, per-example gradients ``G_b``, mean gradient
``G_bar = (1/B) sum_b G_b``. From one step we observe

- ``S_small = (1/B) sum_b |G_b|^2``  (small batch = one example), and
- ``S_big = |G_bar|^2``.

Since ``E|G_B|^2 = |G|^2 + tr(Sigma)/B`` for a batch of ``B``, solving the two equations gives
the unbiased estimates

- ``|G|^2 ~ (B * S_big - S_small) / (B - 1)``,
- ``tr(Sigma) ~ (S_small - S_big) / (1 - 1/B)`` (the Bessel-corrected variance),

and ``B_simple = tr(Sigma) / |G|^2``. Each estimate is unbiased; their ratio is not, so each is
smoothed with its own bias-corrected EMA and the smoothed ratio is reported.
"""

from __future__ import annotations

import math

from fxparam.errors import GNSError


def unbiased_estimates(s_small: float, s_big: float, batch_size: int) -> tuple[float, float]:
    """Unbiased ``(|G|^2, tr(Sigma))`` from per-example and full-batch squared norms.

    Args:
        s_small: mean per-example squared gradient norm ``(1/B) sum_b |G_b|^2``.
        s_big: squared norm of the mean gradient ``|G_bar|^2``.
        batch_size: ``B`` (at least 2).

    Returns:
        ``(g2, trace_sigma)``.

    Example:
        >>> unbiased_estimates(s_small=5.0, s_big=2.0, batch_size=4)
        (1.0, 4.0)
    """
    return two_batch_estimates(s_small, 1, s_big, batch_size)


def two_batch_estimates(s_small: float, b_small: int, s_big: float, b_big: int) -> tuple[float, float]:
    """Unbiased ``(|G|^2, tr(Sigma))`` from mean squared norms at two batch sizes ``b_small < b_big``.

    ``s_small`` is the mean over batches of size ``b_small`` of their squared gradient norms
    (``b_small = 1``: per-example norms), ``s_big`` the squared norm at ``b_big``.

    Example:
        >>> two_batch_estimates(s_small=3.0, b_small=2, s_big=2.0, b_big=4)
        (1.0, 4.0)
    """
    if not (b_big > b_small >= 1):
        raise GNSError(
            f"GNS estimate needs b_big > b_small >= 1, got b_small={b_small}, b_big={b_big}; "
            "a step with a single example carries no noise information (use at least 2 examples per step)"
        )
    g2 = (b_big * s_big - b_small * s_small) / (b_big - b_small)
    trace = (s_small - s_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def ratio(trace_sigma: float, g2: float) -> float:
    """``B_simple = tr(Sigma) / |G|^2``; ``inf`` when ``|G|^2 <= 0 < tr(Sigma)``, NaN when undefined.

    Example:
        >>> ratio(4.0, 1.0), ratio(1.0, -1.0)
        (4.0, inf)
    """
    if not (math.isfinite(trace_sigma) and math.isfinite(g2)):
        return math.nan
    if g2 > 0:
        return trace_sigma / g2
    return math.inf if trace_sigma > 0 else math.nan


class EMA:
    """Bias-corrected exponential moving average (Adam-style): ``value`` after one update is that update.

    Example:
        >>> e = EMA(0.5)
        >>> e.update(2.0); e.update(4.0); e.value
        3.3333333333333335
    """

    def __init__(self, alpha: float = 0.99) -> None:
        if not 0.0 <= alpha < 1.0:
            raise GNSError(f"EMA alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.avg = 0.0
        self.n = 0

    def update(self, x: float) -> None:
        """Add one observation (callers skip non-finite ones)."""
        self.avg = self.alpha * self.avg + (1.0 - self.alpha) * float(x)
        self.n += 1

    @property
    def value(self) -> float:
        """The debiased average; NaN before the first update."""
        if self.n == 0:
            return math.nan
        return self.avg / (1.0 - self.alpha**self.n)

    def state_dict(self) -> dict[str, float]:
        return {"alpha": self.alpha, "avg": self.avg, "n": self.n}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.alpha, self.avg, self.n = float(state["alpha"]), float(state["avg"]), int(state["n"])


__all__ = ["EMA", "ratio", "two_batch_estimates", "unbiased_estimates"]
