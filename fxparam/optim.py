"""Optimizer helpers: per-parameter LR / weight decay / epsilon from the plan.

The effective values are ``lr * lr_mult``, ``weight_decay * wd_mult`` and
``eps * eps_mult`` per parameter, grouped so that parameters with equal multipliers
share a param group.  Schedulers then scale every group relative to its own LR, so
the multipliers survive any schedule (:mod:`fxparam.schedulers` adapts the torch
schedulers that assign absolute LRs, and warns when a step breaks the ratios).

Units: ``lr``, ``weight_decay`` and ``eps`` are *base* hyperparameters (tuned at the base
width/depth), the same units :func:`fxparam.recipes.recommend` returns; pass a recipe with
``recipe=``.

SGD (Tensor Programs V, Table 8; microsoft/mup ``MuSGD``): the LR multipliers are the plan's
``sgd_lr_mult`` and the coupled weight decay is rescaled so that the per-step shrink
``lr * wd`` of every group equals the Adam rule's (width-invariant): ``wd_sgd = weight_decay *
wd_mult * lr_mult / sgd_lr_mult`` (hidden weights: ``weight_decay``, constant across width).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Literal

import torch
import torch.nn as nn

from fxparam.errors import OptimizerError
from fxparam.plan import PLANNED_LR_MULT, PLANNED_PARAMS, on_attach, plan_of, record_lr_mults, unwrap

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

    Every group holds ``params``, ``param_names`` (FQNs, torch's named-param-group key),
    ``lr``, ``weight_decay``, ``eps`` (Adam rule) and ``fxparam_lr_mult`` (its LR over the base
    LR; :mod:`fxparam.schedulers` uses it to keep the ratios).

    Args:
        lr: base (peak) LR, tuned at the base width/depth.
        weight_decay: base coupled weight decay (torch AdamW's ``weight_decay``); hidden weights
            get ``weight_decay * m_d`` under Adam rules (muP table), so that ``lr * wd`` is
            width-invariant; under SGD rules ``lr * wd`` equals the Adam rule's (MuSGD).
        eps: base Adam epsilon (ignored for rule='sgd').
        rule: 'adam' or 'sgd' LR rules.
        independent_wd: hold the per-step shrink ``lr*wd`` at ``weight_decay`` itself
            (independent decay) instead of scaling ``weight_decay`` by the plan.

    Returns:
        A list of param-group dicts for any torch optimizer.

    Raises:
        OptimizerError: ``lr <= 0``, or a trainable parameter that is not in the plan.
        LoweringError: ``model`` was not transformed.

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
        if rule == "sgd" and rules.wd_mult > 0:
            wd *= rules.lr_mult / rules.sgd_lr_mult  # MuSGD: the shrink lr*wd equals the Adam rule's
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
    lr: float | None = None,
    weight_decay: float | None = None,
    eps: float | None = 1e-8,
    *,
    recipe: Any = None,
    rule: Rule | None = None,
    independent_wd: bool = False,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build ``opt_cls`` over ``model`` with the plan's per-parameter scaling.

    Args:
        model: a transformed model (``fxparam.transform``), possibly wrapped (compile, DDP, FSDP2).
        opt_cls: the optimizer class (Adam family, SGD, or any with ``rule=``).
        lr: base LR (required unless ``recipe`` is given).
        weight_decay: base coupled weight decay (default 0; see :func:`param_groups`).
        eps: base Adam epsilon.
        recipe: a :class:`fxparam.recipes.Recipe`: takes ``lr`` and ``weight_decay`` from it (its
            units are this function's); the realized hidden timescale
            ``B / (hidden lr * hidden wd * D)`` then equals ``recipe.tau``.
        rule: 'adam' or 'sgd' (default: from ``opt_cls``).
        independent_wd: see :func:`param_groups`.
        **kwargs: passed to ``opt_cls`` (e.g. ``betas``, ``momentum``).

    Returns:
        ``opt_cls(param_groups(...), lr=lr, **kwargs)``.

    Raises:
        OptimizerError: no ``lr``; ``recipe`` together with ``lr``/``weight_decay``, with
            ``independent_wd`` or with SGD rules; an optimizer class with no known rule.

    Example:
        >>> opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
        >>> r = fxparam.recipes.recommend(params=610e6, tokens=48.5e9, base_lr=1.62e-2, width_multiplier=8)
        >>> opt = fxparam.optimizer(model, torch.optim.AdamW, recipe=r)
    """
    rule = rule or rule_for(opt_cls)
    if recipe is not None:
        lr, weight_decay = _from_recipe(model, recipe, lr, weight_decay, rule, independent_wd)
    if lr is None:
        raise OptimizerError("fxparam.optimizer: give lr= (the base LR) or recipe= (fxparam.recipes.recommend)")
    groups = param_groups(model, lr, weight_decay or 0.0, eps if rule == "adam" else None, rule=rule,
                          independent_wd=independent_wd)
    opt = opt_cls(groups, lr=lr, **kwargs)
    _BUILT.add(opt)
    return opt


def _from_recipe(
    model: nn.Module, recipe: Any, lr: float | None, weight_decay: float | None, rule: str, independent_wd: bool
) -> tuple[float, float]:
    from fxparam.recipes import Recipe

    if not isinstance(recipe, Recipe):
        raise OptimizerError(
            f"fxparam.optimizer: recipe= takes a fxparam.recipes.Recipe (from recommend()), got {type(recipe).__name__}"
        )
    if lr is not None or weight_decay is not None:
        raise OptimizerError(
            "fxparam.optimizer: give either recipe= or lr=/weight_decay=, not both (the recipe's lr and "
            "weight_decay are already base values in this function's units)"
        )
    if independent_wd or rule != "adam":
        raise OptimizerError(
            "fxparam.optimizer: a recipe's timescale assumes AdamW-style coupled decay with Adam LR rules; "
            "drop independent_wd=True / use an Adam-family optimizer, or pass lr= and weight_decay= yourself"
        )
    m_d = plan_of(model).m_d
    if abs(m_d - recipe.width_multiplier) > 1e-6 * max(m_d, recipe.width_multiplier):
        warnings.warn(
            f"fxparam.optimizer: the recipe assumed width_multiplier={recipe.width_multiplier:g} but the model's "
            f"plan has m_d={m_d:g}: the groups' LRs differ from recipe.groups (the hidden tau is unchanged, "
            "lr*wd does not depend on m_d); re-run recommend(width_multiplier=plan.m_d)",
            stacklevel=3,
        )
    return recipe.lr, recipe.weight_decay


# --------------------------------------------------------------------- detection of SP-by-accident

# What fxparam.plan.attach recorded for the check: the attached Parameters by id and their planned LR multipliers.
_EXPECTED: weakref.WeakValueDictionary[int, torch.Tensor] = PLANNED_PARAMS
_LR_MULT: dict[int, float] = PLANNED_LR_MULT
_BUILT: weakref.WeakSet = weakref.WeakSet()
_CHECKED: weakref.WeakSet = weakref.WeakSet()
_HOOK: Any = None


def _install_hook() -> None:
    """Register the optimizer step pre-hook once, at the first :func:`fxparam.plan.attach`."""
    global _HOOK
    if _HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _HOOK = register_optimizer_step_pre_hook(_check_step)


on_attach(_install_hook)


def watch(model: nn.Module) -> None:
    """Remember the plan's LR multipliers so a plan-less optimizer is detected at its first step.

    The lowerings do this through :func:`fxparam.plan.attach`; kept for callers of 0.1.
    """
    record_lr_mults(model, plan_of(model))


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
