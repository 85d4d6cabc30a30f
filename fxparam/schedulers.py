"""torch LR schedulers that keep the plan's per-group LR ratios.

muP / CompleteP give every param group its own peak LR (``base_lr * fxparam_lr_mult``; e.g.
hidden weights at ``base_lr / m_d``, docs/reference/parameterizations.md). A scheduler must
scale each group relative to its own LR (``lr = base_lr * lr_mult * schedule(t)``). Most torch
schedulers do (``LambdaLR``, ``StepLR``, ``CosineAnnealingLR`` with ``eta_min=0``, ...); those that
take *absolute* LRs as one scalar collapse the groups to one LR:

- ``OneCycleLR(max_lr=...)`` and ``CyclicLR(base_lr=..., max_lr=...)``: pass a list per group;
  :func:`one_cycle`, :func:`cyclic` and :func:`adapt` expand a scalar (the *base* value, the units
  of :func:`fxparam.optimizer`) to ``value * fxparam_lr_mult`` per group.
- ``CosineAnnealingLR``/``CosineAnnealingWarmRestarts(eta_min=...)`` take one absolute floor:
  nonzero ``eta_min`` is refused by :func:`adapt` (use :func:`fxparam.schedules.cosine` with
  ``decay_factor``).
- ``ReduceLROnPlateau(min_lr=...)`` and ``torch.optim.swa_utils.SWALR(swa_lr=...)`` take a list: expanded.

Whatever builds the scheduler, an optimizer made by :func:`fxparam.optimizer` is checked at every
step: the first step whose LRs break the ratios raises a :class:`~fxparam.optim.PlanLRWarning`.

Example:
    >>> opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2)
    >>> sched = fxparam.schedulers.one_cycle(opt, max_lr=1e-2, total_steps=1000)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler

from fxparam.errors import OptimizerError
from fxparam.optim import PlanLRWarning, ratios_kept

#: Scheduler keyword arguments that are absolute LRs (one per group when given as a list).
ABSOLUTE_LR_KWARGS = ("max_lr", "base_lr", "min_lr", "swa_lr")
#: Keyword arguments that are one absolute LR for all groups and cannot be given per group.
SCALAR_ONLY_KWARGS = ("eta_min",)


def lr_mults(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each group's planned LR multiplier (``fxparam_lr_mult``), in group order.

    Raises:
        OptimizerError: a group without ``fxparam_lr_mult`` (the optimizer was not built by
            :func:`fxparam.optimizer` / :func:`fxparam.param_groups`).
    """
    out = []
    for i, g in enumerate(optimizer.param_groups):
        if "fxparam_lr_mult" not in g:
            names = ", ".join(g.get("param_names", [])[:3]) or "unnamed parameters"
            raise OptimizerError(
                f"param_groups[{i}] ({names}) has no 'fxparam_lr_mult': build the optimizer with "
                "fxparam.optimizer(model, ...) or over fxparam.param_groups(model, ...) so the plan's LR "
                "ratios are known"
            )
        out.append(float(g["fxparam_lr_mult"]))
    return out


def per_group(optimizer: torch.optim.Optimizer, value: float | list[float]) -> list[float]:
    """A base LR value expanded to one per group: ``value * fxparam_lr_mult`` (a list passes through).

    Raises:
        OptimizerError: a list of the wrong length, or a group without ``fxparam_lr_mult``.
    """
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise OptimizerError(
                f"got {len(value)} per-group values for {len(optimizer.param_groups)} param groups"
            )
        return [float(v) for v in value]
    return [float(value) * m for m in lr_mults(optimizer)]


def adapt(scheduler_cls: type, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
    """Build ``scheduler_cls(optimizer, **kwargs)`` with absolute-LR arguments expanded per group.

    Scalar ``max_lr``/``base_lr``/``min_lr``/``swa_lr`` are base values (``fxparam.optimizer`` units) and become
    ``value * fxparam_lr_mult`` per group, so the schedule keeps the plan's ratios.

    Args:
        scheduler_cls: a ``torch.optim.lr_scheduler`` class (or compatible).
        optimizer: built by :func:`fxparam.optimizer`.
        **kwargs: the scheduler's arguments.

    Returns:
        The scheduler.

    Raises:
        OptimizerError: a nonzero ``eta_min`` (one absolute floor for every group: the ratios break
            at the end of the schedule), or an optimizer without the plan's multipliers.

    Example:
        >>> sched = adapt(torch.optim.lr_scheduler.CyclicLR, opt, base_lr=1e-4, max_lr=1e-2)
    """
    for key in SCALAR_ONLY_KWARGS:
        if kwargs.get(key):
            raise OptimizerError(
                f"{scheduler_cls.__name__}({key}={kwargs[key]}) sets one absolute LR floor for every param group, "
                "which breaks the plan's per-group LR ratios; use fxparam.schedules.cosine(opt, decay_factor=R) "
                f"(floor = peak/R per group) or {key}=0"
            )
    for key in ABSOLUTE_LR_KWARGS:
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = per_group(optimizer, kwargs[key])
    from fxparam.optim import MuonAdamW

    if isinstance(optimizer, MuonAdamW) and _takes(scheduler_cls, "cycle_momentum"):
        # Muon groups carry 'momentum', AdamW groups 'betas': no momentum both share to cycle
        kwargs.setdefault("cycle_momentum", False)
    return scheduler_cls(optimizer, **kwargs)


def _takes(cls: type, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float | list[float], **kwargs: Any) -> lr_scheduler.OneCycleLR:
    """``OneCycleLR`` with ``max_lr`` (a base LR) expanded to ``max_lr * fxparam_lr_mult`` per group.

    Args:
        optimizer: built by :func:`fxparam.optimizer`.
        max_lr: the base peak LR (or a list, one per group, used as given).
        **kwargs: ``OneCycleLR`` arguments (``total_steps`` or ``epochs``/``steps_per_epoch``, ...);
            ``cycle_momentum`` defaults to False for a :class:`~fxparam.optim.MuonAdamW` (its groups
            have no common momentum key).

    Raises:
        OptimizerError: an optimizer without the plan's multipliers.

    Example:
        >>> sched = one_cycle(opt, max_lr=1e-2, total_steps=100)
    """
    return adapt(lr_scheduler.OneCycleLR, optimizer, max_lr=max_lr, **kwargs)


def cyclic(
    optimizer: torch.optim.Optimizer, base_lr: float | list[float], max_lr: float | list[float], **kwargs: Any
) -> lr_scheduler.CyclicLR:
    """``CyclicLR`` with ``base_lr``/``max_lr`` (base values) expanded per group.

    ``cycle_momentum`` defaults to False for a :class:`~fxparam.optim.MuonAdamW` (as in :func:`one_cycle`).

    Raises:
        OptimizerError: an optimizer without the plan's multipliers.
    """
    return adapt(lr_scheduler.CyclicLR, optimizer, base_lr=base_lr, max_lr=max_lr, **kwargs)


__all__ = ["ABSOLUTE_LR_KWARGS", "PlanLRWarning", "adapt", "cyclic", "lr_mults", "one_cycle", "per_group", "ratios_kept"]
