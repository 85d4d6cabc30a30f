"""AdamW as an exponential moving average of its updates (Straight to Zero, Bergsma et al. 2025).

With per-step ``alpha_t = eta_t * lambda`` (PyTorch's coupled decay), the update
``theta_t = (1 - alpha_t) theta_{t-1} - eta_t u_t`` makes the final weights a convex combination
``theta_T = c_{T,0} theta_0 + sum_i c_{T,i} x_i`` with
``c_{T,i} = alpha_i * prod_{j>i} (1 - alpha_j)`` and ``c_{T,0} = prod_j (1 - alpha_j)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.optim.lr_scheduler import LambdaLR

from fxparam.errors import RecipeError
from fxparam.recipes._validate import array_1d, non_negative
from fxparam.recipes.schedules import Schedule, make_schedule

ScheduleLike = Schedule | str | LambdaLR | Callable[[int], float]


@dataclass(frozen=True)
class EMAProfile:
    """The EMA view of one AdamW parameter group over a run of ``T`` updates.

    Attributes:
        coefficients: ``c_{T,i}`` for updates ``i = 1..T`` (array of length T, all >= 0).
        initial_weight: ``c_{T,0}``, the weight left on the initial weights (bias not yet forgotten).
        effective_updates: ``1 / sum_i c_{T,i}**2``, the effective number of averaged updates
            (``inf`` for a group without weight decay, whose coefficients are all 0).
        weight_decay: the group's coupled weight decay ``lambda``.
        peak_lr: the group's peak learning rate (``max_t eta_t``).
    """

    coefficients: npt.NDArray[np.float64] = field(repr=False)
    initial_weight: float
    effective_updates: float
    weight_decay: float
    peak_lr: float

    @property
    def decays(self) -> bool:
        """Whether the group has weight decay at all (otherwise it never forgets ``theta_0``)."""
        return self.weight_decay > 0


def ema_profile(lrs: npt.ArrayLike, weight_decay: float) -> EMAProfile:
    """EMA coefficients of AdamW's final weights for a learning-rate sequence and weight decay.

    Args:
        lrs: the learning rate ``eta_t`` of each update ``t = 1..T`` (absolute, not multipliers).
        weight_decay: the coupled (PyTorch AdamW) weight decay ``lambda`` of the group; 0 is allowed
            (then every ``c_{T,i}`` is 0 and ``c_{T,0} = 1``).

    Returns:
        An :class:`EMAProfile`; ``initial_weight + coefficients.sum() == 1`` up to rounding.

    Raises:
        RecipeError: negative or non-finite LRs, or ``eta_t * lambda > 1`` at some step (AdamW's
            decay would flip the sign of the weights; that is not an EMA).

    Example:
        >>> p = ema_profile([0.1, 0.1], weight_decay=1.0)
        >>> p.coefficients.round(3).tolist(), round(p.initial_weight, 3)
        ([0.09, 0.1], 0.81)
    """
    where = "ema_profile"
    eta = array_1d(lrs, "lrs", where)
    lam = non_negative(weight_decay, "weight_decay", where)
    if (eta < 0).any():
        i = int(np.argmax(eta < 0))
        raise RecipeError(f"{where}: lrs[{i}] = {eta[i]} is negative; learning rates must be >= 0")
    alpha = eta * lam
    if (alpha > 1).any():
        i = int(np.argmax(alpha > 1))
        raise RecipeError(
            f"{where}: eta*lambda = {alpha[i]:.4g} > 1 at update {i}: the decay overshoots zero, so the "
            "weights are not an EMA; lower the learning rate or the weight decay"
        )
    keep = 1.0 - alpha
    # suffix[i] = prod_{j >= i} (1 - alpha_j); the product *after* update i is suffix[i+1].
    suffix = np.cumprod(keep[::-1])[::-1]
    after = np.append(suffix[1:], 1.0)
    coeffs = alpha * after
    sq = float(np.sum(coeffs**2))
    return EMAProfile(
        coefficients=coeffs,
        initial_weight=float(suffix[0]),
        effective_updates=float("inf") if sq == 0.0 else 1.0 / sq,
        weight_decay=lam,
        peak_lr=float(eta.max()),
    )


def peak_lr_of(group: dict[str, Any]) -> float:
    """A param group's peak LR: ``initial_lr`` when a scheduler has set it, else ``lr``."""
    return float(group.get("initial_lr", group["lr"]))


def check_decoupled(optimizer: torch.optim.Optimizer, where: str) -> None:
    """Refuse ``torch.optim.Adam`` with L2 decay: its decay is normalised by Adam, not an EMA."""
    if isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW):
        for i, g in enumerate(optimizer.param_groups):
            if g.get("weight_decay", 0) and not g.get("decoupled_weight_decay", False):
                raise RecipeError(
                    f"{where}: param group {i} uses torch.optim.Adam with L2 weight_decay, which Adam "
                    "rescales per coordinate, so the timescale/EMA laws do not apply; use "
                    "torch.optim.AdamW (or Adam(..., decoupled_weight_decay=True))"
                )


def multipliers_for(
    schedule: ScheduleLike, n_groups: int, total_steps: int | None, where: str
) -> list[npt.NDArray[np.float64]]:
    """Per-group schedule multipliers over the run (a LambdaLR may hold one lambda per group)."""
    if isinstance(schedule, str):
        schedule = make_schedule(schedule, total_steps=total_steps)
    fns: list[Callable[[int], float]]
    if isinstance(schedule, Schedule):
        fns = [schedule] * n_groups
    elif isinstance(schedule, LambdaLR):
        fns = list(schedule.lr_lambdas)
        if len(fns) != n_groups:
            raise RecipeError(f"{where}: the scheduler has {len(fns)} lambdas for {n_groups} param groups")
    elif callable(schedule):
        fns = [schedule] * n_groups
    else:
        raise RecipeError(
            f"{where}: schedule must be a fxparam Schedule, a schedule name, a LambdaLR or a "
            f"callable step -> multiplier, got {type(schedule).__name__}"
        )
    if total_steps is None:
        own = {f.total_steps for f in fns if isinstance(f, Schedule)}
        if len(own) != 1 or not all(isinstance(f, Schedule) for f in fns):
            raise RecipeError(f"{where}: pass total_steps= to evaluate this schedule over the run")
        total_steps = own.pop()
    steps = np.arange(int(total_steps))
    return [
        array_1d(
            f.values(steps) if isinstance(f, Schedule) else [f(int(t)) for t in steps], "multipliers", where
        )
        for f in fns
    ]


def group_ema_profiles(
    optimizer: torch.optim.Optimizer, schedule: ScheduleLike, *, total_steps: int | None = None
) -> list[EMAProfile]:
    """The EMA profile of every param group (in ``optimizer.param_groups`` order).

    Each group's ``eta_t`` is its own peak LR (``initial_lr`` or ``lr``) times the schedule
    multiplier, and ``alpha_t = eta_t * weight_decay`` of that group. Groups with no decay get a
    profile with ``initial_weight == 1`` and ``effective_updates == inf``.

    Args:
        optimizer: an AdamW-style optimizer (coupled decay ``theta *= 1 - lr * weight_decay``).
        schedule: a :class:`~fxparam.recipes.schedules.Schedule`, a schedule name (needs ``total_steps``),
            a ``LambdaLR`` (its per-group lambdas are used) or a callable ``step -> multiplier``.
        total_steps: number of updates; defaults to the schedule's own ``total_steps``.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.1)
        >>> [p.decays for p in group_ema_profiles(opt, "d2z", total_steps=100)]
        [True]
    """
    where = "group_ema_profiles"
    check_decoupled(optimizer, where)
    mults = multipliers_for(schedule, len(optimizer.param_groups), total_steps, where)
    return [
        ema_profile(peak_lr_of(g) * m, float(g.get("weight_decay", 0.0)))
        for g, m in zip(optimizer.param_groups, mults, strict=True)
    ]
