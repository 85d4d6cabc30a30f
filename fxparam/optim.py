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

import math
import warnings
import weakref
from collections.abc import MutableMapping
from typing import Any, Literal

import torch
import torch.nn as nn

from fxparam.errors import OptimizerError
from fxparam.plan import (
    PLANNED_LR_MULT,
    PLANNED_PARAMS,
    on_attach,
    plan_of,
    planned_lr_mult,
    record_lr_mults,
    unwrap,
)

Rule = Literal["adam", "sgd"]
_ADAM = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam", "FusedAdam", "AdamW8bit", "Adam8bit")
_SGD = ("SGD",)
#: Relative-step optimizers: the update is scaled by the parameter's own RMS, so neither column applies.
_RELATIVE_STEP = ("Adafactor",)
#: Adam-family classes whose ``weight_decay`` is L2 (added to the gradient before the normalisation)
#: unless ``decoupled_weight_decay=True`` (Adamax has no decoupled option).
_L2_ADAM = ("Adam", "NAdam", "RAdam", "Adamax")


def rule_for(opt_cls: type) -> Rule:
    """Which LR rules an optimizer class needs ('adam' or 'sgd').

    Raises:
        OptimizerError: a class with no known rule, or a relative-step optimizer (Adafactor: its
            step is ``max(eps2, RMS(p)) * min(lr, 1/sqrt(t))``, Shazeer & Stern 2018, so the Adam
            column's ``eta / m_d`` does not apply and fxparam has no muP table for it).
    """
    for cls in opt_cls.__mro__:
        if cls.__name__ in _RELATIVE_STEP:
            raise OptimizerError(
                f"{opt_cls.__name__} scales each update by the parameter's RMS and caps its LR at 1/sqrt(t) "
                "(relative step size, Shazeer & Stern 2018): the Adam column of the muP table (hidden LR eta/m_d) "
                "does not apply to it and fxparam has no muP table for it. Use torch.optim.AdamW (or Muon), or "
                "pass rule='adam'/'sgd' if you derived the rule yourself (eps is then left at the class default)"
            )
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
    if rule is not None and _is_muon(opt_cls):
        raise OptimizerError(
            "fxparam.optimizer: Muon has its own muP rule (Muon on hidden matrices, AdamW for the rest, "
            "docs/muon.md); drop rule="
        )
    if _is_muon(opt_cls):
        if recipe is not None:
            raise OptimizerError("fxparam.optimizer: recipe= assumes AdamW; pass lr= and weight_decay= for Muon")
        if lr is None:
            raise OptimizerError("fxparam.optimizer: give lr= (the base LR) for Muon")
        return muon_optimizer(model, lr, weight_decay or 0.0, eps, muon_cls=opt_cls, **kwargs)
    rule = rule or rule_for(opt_cls)
    if recipe is not None:
        lr, weight_decay = _from_recipe(model, recipe, lr, weight_decay, rule, independent_wd)
    if lr is None:
        raise OptimizerError("fxparam.optimizer: give lr= (the base LR) or recipe= (fxparam.recipes.recommend)")
    if weight_decay and rule == "adam" and _decay_is_l2(opt_cls, kwargs):
        message = (
            f"fxparam.optimizer: {opt_cls.__name__}(weight_decay=...) adds weight_decay * p to the gradient (L2) "
            "before Adam's normalisation, so it is not the per-step shrink lr * wd that the muP table's hidden "
            "weight decay (lambda * m_d) keeps width-invariant: its strength relative to the gradient changes "
            "with width. Use torch.optim.AdamW"
            + (f" or {opt_cls.__name__}(..., decoupled_weight_decay=True)"
               if _default_of(opt_cls, "decoupled_weight_decay") is not None else "")
        )
        if recipe is not None:
            raise OptimizerError(message + " (a recipe's timescale tau assumes decoupled decay)")
        warnings.warn(message, UserWarning, stacklevel=2)
    tuple_eps = isinstance(_default_of(opt_cls, "eps"), tuple)  # e.g. a custom class with (eps1, eps2)
    groups = param_groups(model, lr, weight_decay or 0.0, eps if rule == "adam" and not tuple_eps else None,
                          rule=rule, independent_wd=independent_wd)
    opt = opt_cls(groups, lr=lr, **kwargs)
    _BUILT.add(opt)
    if recipe is not None:
        _check_recipe_tau(model, opt, recipe)
    return opt


def _check_recipe_tau(model: nn.Module, opt: torch.optim.Optimizer, recipe: Any) -> None:
    """Warn when a hidden group's realized timescale ``B / (lr * wd * D)`` is not ``recipe.tau``.

    The recipe assumes the hidden shrink ``lr * wd`` is ``eta * lambda`` (muP: ``(eta/m_d)(lambda m_d)``);
    a plan whose hidden LR carries another factor (CompleteP with alpha != 1: ``m_L**(alpha-1)``; SuPar:
    ``1/rho``) realizes a different tau, which the recipe (no depth or density input) cannot know.
    """
    plan = plan_of(model)
    if not recipe.weight_decay or not math.isfinite(recipe.tau):
        return
    for group in opt.param_groups:
        hidden = [n for n in group["param_names"] if plan.rules_for(n).role == "hidden"]
        if not hidden or not group.get("weight_decay"):
            continue
        tau = recipe.batch_tokens / (float(group["lr"]) * group["weight_decay"] * recipe.tokens)
        if abs(tau - recipe.tau) > 1e-6 * recipe.tau:
            warnings.warn(
                f"fxparam.optimizer: hidden weights such as {hidden[0]!r} realize the AdamW timescale "
                f"tau = {tau:.4g}, not the recipe's {recipe.tau:.4g}: the plan's hidden LR x{group['fxparam_lr_mult']:.4g} "
                f"and decay x{group['weight_decay'] / recipe.weight_decay:.4g} multiply to "
                f"{recipe.tau / tau:.4g}, not 1 (CompleteP with alpha != 1 adds m_L**(alpha-1) = "
                f"{plan.m_L ** ((plan.alpha or 1.0) - 1.0):.4g}; SuPar adds 1/density), which the recipe does not "
                f"model. For the recipe's tau pass weight_decay={recipe.weight_decay * tau / recipe.tau:.4g} "
                "with lr=recipe.lr instead of recipe=",
                UserWarning,
                stacklevel=3,
            )
            return


def _default_of(opt_cls: type, name: str) -> Any:
    """The default of ``opt_cls.__init__``'s argument ``name`` (None when it has none or no such argument)."""
    import inspect

    try:
        param = inspect.signature(opt_cls.__init__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _decay_is_l2(opt_cls: type, kwargs: dict[str, Any]) -> bool:
    """Whether ``opt_cls(**kwargs)`` applies ``weight_decay`` as L2 in the gradient (torch Adam/NAdam/RAdam
    without ``decoupled_weight_decay=True``, Adamax), rather than as AdamW's decoupled shrink."""
    names = [c.__name__ for c in opt_cls.__mro__]
    if "AdamW" in names or not any(n in _L2_ADAM for n in names):
        return False
    decoupled = kwargs.get("decoupled_weight_decay", _default_of(opt_cls, "decoupled_weight_decay"))
    return not decoupled


def _is_muon(opt_cls: type) -> bool:
    return any(cls.__name__ == "Muon" for cls in getattr(opt_cls, "__mro__", ()))


#: The Muon LR exponent of the width multiplier per ``adjust_lr_fn`` (hidden LR = eta * m_d**-k).
MUON_WIDTH_EXPONENT = {"original": 0.0, "match_rms_adamw": 0.5}


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices and an Adam-family optimizer on everything else, stepped as one.

    ``param_groups`` is the union of both optimizers' groups (the same dicts), so LR schedulers,
    ``zero_grad`` and fxparam's checks see every group; ``state_dict`` holds both states.

    Attributes:
        muon: the Muon optimizer (hidden 2-D weights).
        adam: the Adam-family optimizer (embeddings, readout, vectors, hidden tensors that are not 2-D).
    """

    def __init__(self, muon: torch.optim.Optimizer, adam: torch.optim.Optimizer) -> None:
        self.muon, self.adam = muon, adam
        # defaults["lr"] is the base LR (schedulers such as transformers' cosine_with_min_lr read it)
        base = [g["lr"] / g["fxparam_lr_mult"] for g in muon.param_groups if g.get("fxparam_lr_mult")]
        super().__init__([*muon.param_groups, *adam.param_groups], {"lr": base[0] if base else adam.defaults["lr"]})
        # Optimizer.__init__ re-registered the same dicts: keep them shared with the two inner optimizers
        self.param_groups = [*muon.param_groups, *adam.param_groups]
        # per-parameter state is the inner optimizers' (code that moves `opt.state` to a device, as
        # Lightning does on restore, reaches it)
        self.state = _JointState(self)  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adam.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != {"muon", "adam"}:
            raise OptimizerError("MuonAdamW.load_state_dict: expected {'muon': ..., 'adam': ...} from MuonAdamW.state_dict()")
        self.muon.load_state_dict(state_dict["muon"])
        self.adam.load_state_dict(state_dict["adam"])
        self.param_groups = [*self.muon.param_groups, *self.adam.param_groups]


class _JointState(MutableMapping):
    """``MuonAdamW.state``: a view of ``muon.state`` and ``adam.state``; a write goes to the optimizer owning the
    Parameter (the inner dicts are looked up at each access: ``load_state_dict`` replaces them)."""

    def __init__(self, owner: MuonAdamW) -> None:
        self._owner = owner

    def _maps(self) -> tuple[Any, Any]:
        return self._owner.muon.state, self._owner.adam.state

    def _owning(self, key: Any) -> Any:
        in_muon = any(key is p for g in self._owner.muon.param_groups for p in g["params"])
        return self._owner.muon.state if in_muon else self._owner.adam.state

    def __getitem__(self, key: Any) -> Any:
        for m in self._maps():
            if key in m:
                return m[key]
        raise KeyError(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._owning(key)[key] = value

    def __delitem__(self, key: Any) -> None:
        for m in self._maps():
            if key in m:
                del m[key]
                return
        raise KeyError(key)

    def __iter__(self) -> Any:
        for m in self._maps():
            yield from m

    def __len__(self) -> int:
        return sum(len(m) for m in self._maps())


def muon_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    eps: float | None = 1e-8,
    *,
    muon_cls: type[torch.optim.Optimizer] | None = None,
    adjust_lr_fn: str = "match_rms_adamw",
    adam_lr: float | None = None,
    adam_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    adam_kwargs: dict[str, Any] | None = None,
    **muon_kwargs: Any,
) -> MuonAdamW:
    """Muon (``torch.optim.Muon``) for hidden matrices, AdamW for the rest, with muP/CompleteP rules.

    The rule (spectral condition for feature learning, Yang, Simon & Bernstein 2023,
    arXiv 2310.17813: a hidden weight's update needs spectral norm Theta(sqrt(fan_out/fan_in)),
    i.e. Theta(1) for width->width matrices). Muon's orthogonalised update ``O`` has spectral norm 1
    and torch scales it by ``lr * adjust(shape)``:

    - ``adjust_lr_fn="match_rms_adamw"`` (default; Liu et al. 2025, "Muon is scalable for LLM
      training"): ``0.2 * sqrt(max(fan_out, fan_in))``, growing as ``sqrt(m_d)`` -> hidden LR
      ``eta / sqrt(m_d)``; one base LR ``eta`` serves Muon and AdamW (the update RMS matches AdamW's).
    - ``adjust_lr_fn="original"`` (Jordan et al. 2024): ``sqrt(max(1, fan_out/fan_in))``, constant
      across width -> hidden LR ``eta`` (no width factor).

    CompleteP's depth factor ``m_L**(alpha-1)`` multiplies the hidden LR as for Adam (both normalise
    their updates). Weight decay: Muon decays as ``p *= 1 - lr * wd``; ``wd`` is chosen so the shrink
    ``lr * wd`` equals the Adam rule's (width-invariant timescale): ``weight_decay * wd_mult *
    lr_mult / muon_lr_mult``. Everything that is not a 2-D hidden weight (embeddings, readout,
    vectors, conv kernels) gets ``adam_cls`` with the Adam table (LR ``adam_lr * lr_mult``, eps
    ``eps * eps_mult``). Full derivation: docs/muon.md.

    Args:
        model: a transformed model.
        lr: Muon's base LR ``eta`` (at the base width/depth).
        weight_decay: base coupled weight decay lambda (both optimizers).
        eps: base Adam epsilon.
        muon_cls: the Muon class (default ``torch.optim.Muon``).
        adjust_lr_fn: ``"match_rms_adamw"`` or ``"original"`` (passed to Muon).
        adam_lr: base LR of the Adam part (default ``lr``).
        adam_cls, adam_kwargs: the optimizer for the rest and its extra arguments.
        **muon_kwargs: passed to Muon (``momentum``, ``nesterov``, ``ns_steps``...).

    Returns:
        A :class:`MuonAdamW`; every group carries ``param_names`` and ``fxparam_lr_mult`` (relative
        to ``lr``), so :mod:`fxparam.schedulers` keep the ratios.

    Raises:
        OptimizerError: ``lr <= 0``, an unknown ``adjust_lr_fn``, or torch without Muon (< 2.9).

    Example:
        >>> opt = fxparam.optimizer(model, torch.optim.Muon, lr=2e-2, weight_decay=0.1)
    """
    if muon_cls is None:
        muon_cls = getattr(torch.optim, "Muon", None)
        if muon_cls is None:
            raise OptimizerError("torch.optim.Muon needs torch >= 2.9; upgrade torch or pass muon_cls=")
    if adjust_lr_fn not in MUON_WIDTH_EXPONENT:
        raise OptimizerError(
            f"fxparam knows the muP rule for Muon's adjust_lr_fn 'match_rms_adamw' and 'original', got {adjust_lr_fn!r}"
        )
    if lr <= 0:
        raise OptimizerError(f"lr must be positive, got {lr}")
    adam_lr = lr if adam_lr is None else adam_lr
    plan = plan_of(model)
    k = MUON_WIDTH_EXPONENT[adjust_lr_fn]
    depth_lr = plan.m_L ** (plan.alpha - 1.0) if plan.alpha is not None else 1.0
    muon_mult = plan.m_d**-k * depth_lr
    muon_params: list[tuple[str, nn.Parameter]] = []
    adam_groups = param_groups(model, adam_lr, weight_decay, eps, rule="adam")
    for group in adam_groups:
        group["fxparam_lr_mult"] = group["fxparam_lr_mult"] * adam_lr / lr
        keep = [(n, p) for n, p in zip(group["param_names"], group["params"], strict=True)
                if not (plan.rules_for(n).role == "hidden" and p.ndim == 2)]
        muon_params += [(n, p) for n, p in zip(group["param_names"], group["params"], strict=True)
                        if plan.rules_for(n).role == "hidden" and p.ndim == 2]
        group["param_names"] = [n for n, _ in keep]
        group["params"] = [p for _, p in keep]
    adam_groups = [g for g in adam_groups if g["params"]]
    if not muon_params:
        raise OptimizerError("muon_optimizer: the plan has no 2-D hidden weights for Muon; use AdamW")
    by_wd: dict[float, dict[str, Any]] = {}
    for name, p in muon_params:
        rules = plan.rules_for(name)
        wd = weight_decay * rules.wd_mult * rules.lr_mult / muon_mult if rules.wd_mult else 0.0
        group = by_wd.setdefault(wd, {"params": [], "param_names": [], "lr": lr * muon_mult, "weight_decay": wd,
                                      "fxparam_lr_mult": muon_mult, "adjust_lr_fn": adjust_lr_fn})
        group["params"].append(p)
        group["param_names"].append(name)
    muon = muon_cls(list(by_wd.values()), lr=lr * muon_mult, adjust_lr_fn=adjust_lr_fn, **muon_kwargs)
    adam = adam_cls(adam_groups, lr=adam_lr, **(adam_kwargs or {}))
    opt = MuonAdamW(muon, adam)
    _BUILT.update((opt, muon, adam))
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
_EXPECTED: weakref.WeakValueDictionary[int, nn.Module] = PLANNED_PARAMS
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
    """Step pre-hook of every optimizer (installed at the first attach).

    An optimizer whose groups carry ``fxparam_lr_mult`` (built by :func:`optimizer` or from
    :func:`param_groups`) is checked at every step for the plan's LR ratios (a scheduler that
    assigns absolute LRs breaks them); any other optimizer is checked once, at its first step,
    for parameters of different planned LR multipliers sharing one group (SP by accident).
    """
    if any("fxparam_lr_mult" in g for g in opt.param_groups):
        if opt not in _RATIO_WARNED and not ratios_kept(opt):
            _RATIO_WARNED.add(opt)
            warnings.warn(_ratio_message(opt), PlanLRWarning, stacklevel=3)
        return
    if opt in _CHECKED:
        return
    _CHECKED.add(opt)
    if opt in _BUILT:
        return
    mult_of = _planned_lr_mults(opt)
    for group in opt.param_groups:
        mults = {m for p in group["params"] if (m := mult_of(p, group)) is not None}
        if len(mults) > 1:
            warnings.warn(
                "fxparam: this optimizer puts parameters with different planned LR multipliers in one param "
                "group, so the transformed model trains with a single LR (standard parameterization). "
                "Build it with fxparam.optimizer(model, ...) or fxparam.param_groups(model, ...).",
                stacklevel=3,
            )
            return


class PlanLRWarning(UserWarning):
    """A step runs with per-group LRs whose ratios are not the plan's (e.g. a scheduler set one LR for all)."""


_RATIO_WARNED: weakref.WeakSet = weakref.WeakSet()


def ratios_kept(opt: torch.optim.Optimizer, *, rtol: float = 1e-6) -> bool:
    """Whether every group's LR is still ``base_lr * fxparam_lr_mult`` for one common ``base_lr``.

    Groups without ``fxparam_lr_mult`` (added by hand) and groups with multiplier 0 are not judged.

    Args:
        opt: an optimizer built by :func:`optimizer` (or over :func:`param_groups`).
        rtol: relative tolerance on the implied base LRs.

    Returns:
        True when the implied base LRs ``lr / fxparam_lr_mult`` agree within ``rtol``.
    """
    bases = [float(g["lr"]) / g["fxparam_lr_mult"] for g in opt.param_groups if g.get("fxparam_lr_mult")]
    if len(bases) < 2:
        return True
    hi, lo = max(bases), min(bases)
    return hi - lo <= rtol * max(abs(hi), abs(lo), 1e-300)


def _ratio_message(opt: torch.optim.Optimizer) -> str:
    parts = ", ".join(
        f"{g.get('param_names', ['?'])[0]}{'...' if len(g.get('param_names', [])) > 1 else ''}: lr {float(g['lr']):.4g} "
        f"(planned x{g['fxparam_lr_mult']:.4g})"
        for g in opt.param_groups[:4]
        if "fxparam_lr_mult" in g
    )
    return (
        "fxparam: the param groups' LRs no longer keep the plan's ratios (" + parts + "): a scheduler or "
        "hand-written code assigned absolute LRs, so the model trains with the wrong per-layer LRs. Use "
        "fxparam.schedules (relative multipliers) or fxparam.schedulers.one_cycle / fxparam.schedulers.adapt, "
        "which expand max_lr/base_lr per group."
    )


def _planned_lr_mults(opt: torch.optim.Optimizer) -> Any:
    """``(param, group) -> planned Adam LR multiplier or None``, keyed by FQN.

    Parameters are named through the live attached models (so Parameters replaced by
    ``load_state_dict(assign=True)`` or FSDP2 ``fully_shard`` are found), through the group's
    ``param_names`` (torch named param groups), and, for a Parameter of an unregistered copy
    (``copy.deepcopy`` of a transformed model), by finding its owning transformed module.
    """
    from fxparam.plan import ATTACHED_MODELS, PLAN_ATTR

    table: dict[int, float] = {}

    def add_model(model: nn.Module) -> None:
        plan = getattr(model, PLAN_ATTR, None)
        if plan is None:
            return
        for fqn, p in model.named_parameters():
            if fqn in plan.params:
                table[id(p)] = plan.rules_for(fqn).lr_mult

    for model in list(ATTACHED_MODELS):
        add_model(model)
    plans = [getattr(m, PLAN_ATTR) for m in list(ATTACHED_MODELS) if getattr(m, PLAN_ATTR, None) is not None]
    anything_planned = bool(plans) or bool(PLANNED_LR_MULT)
    unknown = [p for g in opt.param_groups for p in g["params"] if id(p) not in table]
    # a copy of a transformed model has the same shapes as a live attached one: only then search (gc walk)
    shapes = {tuple(p.shape) for m in list(ATTACHED_MODELS) for p in m.parameters()}
    if unknown and anything_planned and tuple(unknown[0].shape) in shapes:
        root = _planned_root_of(unknown[0])  # a copy's Parameters share one root: one search
        if root is not None:
            ATTACHED_MODELS.add(root)
            add_model(root)

    def mult_of(p: torch.Tensor, group: dict[str, Any]) -> float | None:
        if id(p) in table:
            return table[id(p)]
        names = group.get("param_names")
        if names:
            name = names[[id(q) for q in group["params"]].index(id(p))]
            for plan in plans:
                if name in plan.params:
                    return plan.rules_for(name).lr_mult
        return planned_lr_mult(p)

    return mult_of


def _planned_root_of(param: torch.Tensor, max_levels: int = 32) -> nn.Module | None:
    """The transformed module (one holding a plan) that owns ``param``, found by walking up the module tree.

    Uses :func:`gc.get_referrers` (a Parameter knows no owner): the dict holding it is a module's
    ``_parameters``; that module sits in a parent's ``_modules``, and so on. Runs at most once per
    optimizer, at its first step, only when it holds Parameters of no attached model.
    """
    import gc

    from fxparam.plan import PLAN_ATTR

    frontier: list[Any] = [param]
    seen: set[int] = set()
    for _ in range(max_levels):
        parents: list[nn.Module] = []
        for obj in frontier:
            for d in gc.get_referrers(obj):
                if not isinstance(d, dict) or id(d) in seen:
                    continue
                seen.add(id(d))
                # d is a module's _parameters/_modules; the module refers to it through its __dict__
                holders = gc.get_referrers(d)
                holders += [o for h in holders if isinstance(h, dict) for o in gc.get_referrers(h)]
                for m in holders:
                    if isinstance(m, nn.Module) and (
                        m.__dict__.get("_parameters") is d or m.__dict__.get("_modules") is d
                    ):
                        if m.__dict__.get(PLAN_ATTR) is not None:
                            return m
                        parents.append(m)
        if not parents:
            return None
        frontier = parents
    return None
