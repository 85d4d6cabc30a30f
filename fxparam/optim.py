"""Optimizer helpers: per-parameter LR / weight decay / epsilon from the plan.

The effective values are ``lr * lr_mult``, ``weight_decay * wd_mult`` and
``eps * eps_mult`` per parameter, grouped so that parameters with equal multipliers
share a param group.  Schedulers then scale every group relative to its own LR, so
the multipliers survive any schedule.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Literal

import torch
import torch.nn as nn

from fxparam.errors import OptimizerError
from fxparam.lowering.eager import plan_of, unwrap

Rule = Literal["adam", "sgd"]
_ADAM = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adafactor", "SparseAdam", "FusedAdam", "AdamW8bit", "Adam8bit")
_SGD = ("SGD",)


def rule_for(opt_cls: type) -> Rule:
    """Which LR rules an optimizer class needs ('adam' or 'sgd')."""
    for cls in opt_cls.__mro__:
        if cls.__name__ in _ADAM:
            return "adam"
        if cls.__name__ in _SGD:
            return "sgd"
    raise OptimizerError(
        f"fxparam does not know the muP LR rule for {opt_cls.__name__}: pass rule='adam' (Adam-like, "
        "per-coordinate normalised updates) or rule='sgd' (plain gradient steps) to fxparam.optimizer/param_groups"
    )


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    eps: float | None = 1e-8,
    *,
    rule: Rule = "adam",
    independent_wd: bool = False,
) -> list[dict[str, Any]]:
    """Param groups carrying the plan's effective LR, weight decay and epsilon.

    Args:
        lr: base (peak) LR, tuned at the base width/depth.
        weight_decay: base coupled weight decay (torch AdamW's ``weight_decay``).
        eps: base Adam epsilon (ignored for rule='sgd').
        rule: 'adam' or 'sgd' LR rules.
        independent_wd: hold the per-step shrink ``lr*wd`` at ``weight_decay`` itself
            (independent decay) instead of scaling ``weight_decay`` by the plan.

    Example:
        >>> groups = fxparam.param_groups(model, lr=1e-2, weight_decay=0.1)
        >>> opt = torch.optim.AdamW(groups)
    """
    if lr <= 0:
        raise OptimizerError(f"lr must be positive, got {lr}")
    plan = plan_of(model)
    inner = unwrap(model)
    groups: dict[tuple[float, float, float], dict[str, Any]] = {}
    for name, param in inner.named_parameters():
        if not param.requires_grad:
            continue
        if name not in plan.params:
            raise OptimizerError(f"parameter {name!r} is not in the plan: was the model changed after transform?")
        rules = plan.rules_for(name)
        lr_mult = rules.sgd_lr_mult if rule == "sgd" else rules.lr_mult
        group_lr = lr * lr_mult
        wd = weight_decay * rules.wd_mult
        if independent_wd and rules.wd_mult > 0:
            wd = weight_decay / group_lr
        key = (group_lr, wd, rules.eps_mult)
        if key not in groups:
            group: dict[str, Any] = {"params": [], "param_names": [], "lr": group_lr, "weight_decay": wd,
                                     "fxparam_lr_mult": lr_mult}
            if rule == "adam" and eps is not None:
                group["eps"] = eps * rules.eps_mult
            groups[key] = group
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def optimizer(
    model: nn.Module,
    opt_cls: type[torch.optim.Optimizer],
    lr: float,
    weight_decay: float = 0.0,
    eps: float | None = 1e-8,
    *,
    rule: Rule | None = None,
    independent_wd: bool = False,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build ``opt_cls`` over ``model`` with the plan's per-parameter scaling.

    Example:
        >>> opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    """
    rule = rule or rule_for(opt_cls)
    groups = param_groups(model, lr, weight_decay, eps if rule == "adam" else None, rule=rule,
                          independent_wd=independent_wd)
    opt = opt_cls(groups, lr=lr, **kwargs)
    _BUILT.add(opt)
    return opt


# --------------------------------------------------------------------- detection of SP-by-accident

_EXPECTED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
_LR_MULT: dict[int, float] = {}
_BUILT: weakref.WeakSet = weakref.WeakSet()
_CHECKED: weakref.WeakSet = weakref.WeakSet()
_HOOK: Any = None


def watch(model: nn.Module) -> None:
    """Remember the plan's LR multipliers so a plan-less optimizer is detected at its first step."""
    global _HOOK
    plan = plan_of(model)
    for name, p in unwrap(model).named_parameters():
        _EXPECTED[id(p)] = p
        _LR_MULT[id(p)] = plan.rules_for(name).lr_mult
    if _HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _HOOK = register_optimizer_step_pre_hook(_check_step)


def _check_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if opt in _CHECKED:
        return
    _CHECKED.add(opt)
    if opt in _BUILT:
        return
    for group in opt.param_groups:
        mults = {_LR_MULT[id(p)] for p in group["params"] if _EXPECTED.get(id(p)) is p}
        if len(mults) > 1 and "fxparam_lr_mult" not in group:
            warnings.warn(
                "fxparam: this optimizer puts parameters with different planned LR multipliers in one param "
                "group, so the transformed model trains with a single LR (standard parameterization). "
                "Build it with fxparam.optimizer(model, ...) or fxparam.param_groups(model, ...).",
                stacklevel=3,
            )
            return
