"""The Plan: everything a transform does to a model, keyed by FQN, as diffable JSON.

Facts live here and never on Parameter objects (those are lost under FSDP and copies).

This module is also the one home of "the plan on a module": the attribute that records
it (:data:`PLAN_ATTR`), :func:`attach` (called by every lowering), :func:`plan_of` and
:func:`unwrap`.  The optimizer helpers (:mod:`fxparam.optim`) and the lowerings
(:mod:`fxparam.lowering`) both depend on this module and never on each other.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fxparam.errors import LoweringError, PlanError


class _Rec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamPlan(_Rec):
    """What happens to one parameter.

    Attributes:
        role: its role from the analysis.
        init: "normal" (re-draw with ``init_std``), "zeros", or "keep" (leave the values).
        init_std: std of the normal init.
        lr_mult: Adam-family LR multiplier (relative to the base LR).
        sgd_lr_mult: SGD LR multiplier.
        wd_mult: weight-decay multiplier (coupled AdamW ``weight_decay``); 0 = no decay.
        eps_mult: Adam epsilon multiplier.
        density: mask density (SμPar), 1.0 = dense.
        tied_to: alias of another FQN's Parameter: that FQN's plan rules.
    """

    role: str
    init: Literal["normal", "zeros", "keep"] = "keep"
    init_std: float | None = None
    lr_mult: float = 1.0
    sgd_lr_mult: float = 1.0
    wd_mult: float = 1.0
    eps_mult: float = 1.0
    density: float = 1.0
    tied_to: str | None = None


class AttentionPlan(_Rec):
    """New logit scale of one attention site, and where it is set."""

    scale: float
    previous: float
    head_dim: int
    attr: str | None = None
    attr_module: str | None = None
    kind: str = "sdpa"


class MaskPlan(_Rec):
    """A static random mask on one parameter (SμPar): kept entries are a pure function of (seed, FQN).

    Attributes:
        density: fraction of entries kept, in (0, 1].
        seed: the SuPar seed.
        store: keep the mask in ``state_dict`` (a bool buffer key) instead of re-deriving it.
    """

    density: float
    seed: int
    store: bool = False


#: The schema version this fxparam writes (``Plan.version``).  Version 1 kept the readout-input
#: multipliers in ``multipliers`` under keys ``"input:<fqn>"``; :meth:`Plan.from_json` upgrades it.
PLAN_VERSION = 2
#: Key prefix of an input multiplier in version-1 plans and in the read-only
#: :attr:`Plan.multipliers` view (never parsed by the lowerings).
LEGACY_INPUT_PREFIX = "input:"


def input_site(module: str) -> str:
    """Label of ``module``'s input multiplier in reports (:meth:`Plan.forward_sites`)."""
    return f"{module} (input)"


class Plan(_Rec):
    """A complete, JSON-serialisable description of a transform.

    Attributes:
        config: the config that produced it (JSON of the pydantic config).
        width, base_width, m_d: model width, base width and their ratio.
        depth, base_depth, m_L: number of residual blocks, base depth, ratio.
        params: per-parameter plan, for every FQN (tied aliases included).
        output_multipliers: module FQN -> factor on the module's output (embedding alpha_in,
            residual branches 1/m_L^alpha; factors on one module combined by product).
        input_multipliers: module FQN -> factor on the module's (first) input (readout
            alpha_out/m_d, applied to the readout's input as microsoft/mup's ``MuReadout``).
        attention: per attention module, the new logit scale.
        masks: per masked parameter FQN (SμPar).
        norm_swaps: norm modules replaced by fused per-example-gradient versions (GNS).
        notes: human-readable decisions (e.g. the assumed base head dim).
        model_shapes: the analysis fingerprint: shape of every parameter FQN of the model the
            plan was built for (``apply_plan`` refuses a model whose shapes differ, e.g. another
            width); empty for hand-made plans (not checked).
    """

    version: int = PLAN_VERSION
    fxparam_version: str = ""
    passes: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    model_class: str = ""
    width: int | None = None
    base_width: int | None = None
    m_d: float = 1.0
    depth: int = 0
    base_depth: int | None = None
    m_L: float = 1.0
    alpha: float | None = None
    params: dict[str, ParamPlan] = Field(default_factory=dict)
    output_multipliers: dict[str, float] = Field(default_factory=dict)
    input_multipliers: dict[str, float] = Field(default_factory=dict)
    attention: dict[str, AttentionPlan] = Field(default_factory=dict)
    masks: dict[str, MaskPlan] = Field(default_factory=dict)
    norm_swaps: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    model_shapes: dict[str, list[int]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Version 1 -> 2: split ``multipliers`` (``"input:<fqn>"`` keys) into the two typed tables."""
        if not isinstance(data, dict):
            return data
        version = data.get("version", PLAN_VERSION if "multipliers" not in data else 1)
        if isinstance(version, int) and version > PLAN_VERSION:
            raise ValueError(
                f"plan version {version} is newer than this fxparam reads ({PLAN_VERSION}): upgrade fxparam"
            )
        if "multipliers" not in data and version == PLAN_VERSION:
            return data
        data = dict(data)
        outputs = dict(data.get("output_multipliers") or {})
        inputs = dict(data.get("input_multipliers") or {})
        for key, factor in (data.pop("multipliers", None) or {}).items():
            if key.startswith(LEGACY_INPUT_PREFIX):
                inputs[key[len(LEGACY_INPUT_PREFIX):]] = factor
            else:
                outputs[key] = factor
        data.update(version=PLAN_VERSION, output_multipliers=outputs, input_multipliers=inputs)
        return data

    @property
    def multipliers(self) -> dict[str, float]:
        """Read-only version-1 view of both tables: output factors by FQN, input factors by ``"input:<fqn>"``.

        Kept for readers of 0.1 plans; write with :meth:`multiply`, read
        :attr:`output_multipliers` / :attr:`input_multipliers`.
        """
        view = dict(self.output_multipliers)
        view.update({LEGACY_INPUT_PREFIX + k: v for k, v in self.input_multipliers.items()})
        return view

    def to_json(self) -> str:
        """The plan as indented JSON (the current :data:`PLAN_VERSION` schema)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Load a plan saved by :meth:`to_json`; version-1 JSON is upgraded to version 2.

        Raises:
            PlanError: not a valid plan (or a version newer than this fxparam).
        """
        try:
            return cls.model_validate_json(text)
        except Exception as exc:  # noqa: BLE001
            raise PlanError(f"not a valid fxparam plan: {exc}") from exc

    def fingerprint(self) -> str:
        """Stable hash of the plan (for compile cache keys)."""
        data = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    def multiply(self, module: str, factor: float, *, on: Literal["output", "input"] = "output") -> None:
        """Multiply ``module``'s output (or input) by ``factor``, on top of what is planned there.

        Args:
            module: the module FQN (a version-1 key ``"input:<fqn>"`` means ``on="input"``).
            factor: the forward multiplier; 1.0 records nothing.
            on: "output" (embedding, residual branch) or "input" (readout).
        """
        if module.startswith(LEGACY_INPUT_PREFIX):
            module, on = module[len(LEGACY_INPUT_PREFIX):], "input"
        if factor != 1.0:
            table = self.input_multipliers if on == "input" else self.output_multipliers
            table[module] = table.get(module, 1.0) * factor

    def multiplied_modules(self) -> set[str]:
        """Every module FQN with a planned output or input multiplier."""
        return set(self.output_multipliers) | set(self.input_multipliers)

    def forward_sites(self) -> set[str]:
        """Labels of every forward change: ``fqn`` (output multiplier, attention scale), ``"fqn (input)"``."""
        return {*self.output_multipliers, *(input_site(m) for m in self.input_multipliers), *self.attention}

    def rules_for(self, fqn: str) -> ParamPlan:
        """The plan that governs ``fqn``'s tensor (a tied alias defers to its owner)."""
        p = self.params[fqn]
        return self.params[p.tied_to] if p.tied_to else p

    def summary(self) -> str:
        from fxparam._text import table as _table

        head = (
            f"{self.model_class} plan [{' -> '.join(self.passes)}]: width {self.width}"
            f" (m_d={self.m_d:.4g}), depth {self.depth} (m_L={self.m_L:.4g})"
        )
        rows = [
            [n, p.role, p.init + (f"({p.init_std:.3g})" if p.init_std else ""), f"{p.lr_mult:.4g}",
             f"{p.wd_mult:.4g}", f"{p.eps_mult:.4g}", f"{p.density:.3g}", p.tied_to or ""]
            for n, p in self.params.items()
        ]
        from fxparam._fold import fold_rows  # blocks.{0..23}.attn.q: one row per repeated parameter

        lines = [head, ""] + _table(fold_rows(rows), ["parameter", "role", "init", "lr", "wd", "eps", "density", "tied to"])
        if self.output_multipliers or self.input_multipliers:
            folded = fold_rows([[m, f"{v:.4g}"] for m, v in self.output_multipliers.items()])
            folded += fold_rows([[input_site(m), f"{v:.4g}"] for m, v in self.input_multipliers.items()])
            lines += ["", "forward multipliers:"] + [f"  {m}: x{v}" for m, v in folded]
        if self.attention:
            first = next(iter(self.attention.items()))
            lines += ["", f"attention logit scale: {first[1].previous:.4g} -> {first[1].scale:.4g} "
                          f"({len(self.attention)} sites, e.g. {first[0]})"]
        if self.norm_swaps:
            lines += ["", f"norm swaps (GNS): {len(self.norm_swaps)}"]
        if self.masks:
            densities = ", ".join(f"{d:.4g}" for d in sorted({m.density for m in self.masks.values()}))
            seeds = ", ".join(str(s) for s in sorted({m.seed for m in self.masks.values()}))
            where = (
                "stored in state_dict"
                if any(m.store for m in self.masks.values())
                else "re-derived from (seed, FQN), not in state_dict"
            )
            lines += ["", f"masks (SuPar): {len(self.masks)} parameters, density {densities}, seed {seeds}; {where}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------- the plan on a module

#: Attribute of a transformed module holding its :class:`Plan`.
PLAN_ATTR = "_fxparam_plan"

#: What the optimizer check (:mod:`fxparam.optim`, "SP by accident") needs, filled by
#: :func:`attach`: the transformed module owning each attached Parameter, by the Parameter's ``id``
#: (the module weakly, never the Parameter: a weakref on a Parameter makes ``torch.utils.swap_tensors``,
#: hence ``model.half()`` / ``load_state_dict`` under ``swap_module_params_on_conversion``, refuse it) ...
PLANNED_PARAMS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()
#: ... and its planned Adam-rule LR multiplier (``ParamPlan.lr_mult`` of the rules governing it).
PLANNED_LR_MULT: dict[int, float] = {}
#: Every attached module (weakly): the optimizer check maps Parameters to FQNs through it at step
#: time, so the check survives ``load_state_dict(assign=True)`` and FSDP2 (new Parameter objects).
ATTACHED_MODELS: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_ON_ATTACH: list[Callable[[], None]] = []


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / ``torch.compile`` wrappers.

    Args:
        model: a module, possibly ``DistributedDataParallel(...)`` or ``torch.compile(...)``'s
            ``OptimizedModule`` (nested in any order).

    Returns:
        The innermost module (``model`` itself when it is not wrapped).
    """
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def plan_of(model: nn.Module) -> Plan:
    """The Plan fxparam applied to ``model`` (through DDP / ``torch.compile`` wrappers).

    Returns:
        The :class:`Plan` recorded by the lowering.

    Raises:
        LoweringError: ``model`` was never transformed by fxparam.
    """
    plan = getattr(unwrap(model), PLAN_ATTR, None)
    if plan is None and getattr(getattr(unwrap(model), "config", None), "fxparam_plan", None):
        raise LoweringError(
            f"{type(model).__name__} was loaded from a checkpoint of a transformed model (its config carries an "
            "fxparam plan) without applying that plan, so it computes another function than the saved model: "
            "load it with fxparam.from_pretrained(cls, path)"
        )
    if plan is None:
        raise LoweringError(
            f"{type(model).__name__} was not transformed by fxparam: call fxparam.transform(model, ...) first"
        )
    return plan


def record_lr_mults(model: nn.Module, plan: Plan) -> None:
    """Remember ``plan``'s LR multiplier of each of ``model``'s Parameters (for the optimizer check)."""
    root = unwrap(model)
    for name, p in root.named_parameters():
        PLANNED_PARAMS[id(p)] = root
        PLANNED_LR_MULT[id(p)] = plan.rules_for(name).lr_mult
    ATTACHED_MODELS.add(unwrap(model))
    for fn in _ON_ATTACH:
        fn()


def planned_lr_mult(param: torch.Tensor) -> float | None:
    """The LR multiplier :func:`attach` recorded for ``param``, or None (an ``id`` reused by another tensor is None)."""
    owner = PLANNED_PARAMS.get(id(param))
    if owner is None or not any(q is param for q in owner.parameters()):
        return None
    return PLANNED_LR_MULT.get(id(param))


def on_attach(fn: Callable[[], None]) -> None:
    """Call ``fn()`` after every :func:`attach` (the optimizer check installs its step hook this way)."""
    if fn not in _ON_ATTACH:
        _ON_ATTACH.append(fn)


def attach(model: nn.Module, plan: Plan) -> None:
    """Record ``plan`` on ``model`` and register what the optimizer check needs.

    Every lowering (eager, graph, compile) ends with this call: afterwards
    :func:`plan_of` finds the plan (``fxparam.optimizer`` builds its param groups from it),
    and an optimizer that mixes parameters of different planned LR multipliers in one
    param group is warned about at its first step.

    Args:
        model: the lowered module (the module itself, a GraphModule, or the module a
            ``torch.compile`` wrapper will run).
        plan: the plan applied to it.
    """
    setattr(model, PLAN_ATTR, plan)
    record_lr_mults(model, plan)
