"""``recommend``: a full hyperparameter recipe from N, D and the LR, by the Power Lines laws.

Units: a :class:`Recipe`'s ``lr`` and ``weight_decay`` are *base* hyperparameters, exactly what
:func:`fxparam.optimizer` takes (``lr=``, ``weight_decay=``; or pass ``recipe=`` directly). The plan's
muP/CompleteP multipliers for Adam turn them into the per-group values: hidden weights get
``lr / m_d`` and ``weight_decay * m_d`` (docs/reference/parameterizations.md, Adam table), so the
hidden timescale ``tau = B / (hidden_lr * hidden_weight_decay * D)`` is the one the recipe reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fxparam.errors import RecipeError
from fxparam.recipes._constants import LawConstants
from fxparam.recipes._timescale import b_crit, b_opt, lambda_opt, tau_opt
from fxparam.recipes._validate import positive
from fxparam.recipes.schedules import SCHEDULE_NAMES, Schedule, make_schedule

#: Default param groups: LR multiplier relative to ``base_lr`` (None = 1/width_multiplier, the hidden
#: rule, whose weight decay is then ``weight_decay * width_multiplier``) and whether the group has
#: weight decay. muP/CompleteP with Adam: hidden matrices at base_lr/m with decay lambda*m; embeddings,
#: readout (scaled by its forward multiplier instead) and vectors at base_lr; biases and norm gains
#: without decay. These are the effective per-group values ``fxparam.optimizer`` builds.
DEFAULT_GROUPS: dict[str, tuple[float | None, bool]] = {
    "hidden": (None, True),
    "embedding": (1.0, True),
    "vector": (1.0, False),
}


class GroupRecipe(BaseModel):
    """Peak LR, weight decay and timescale of one param group (``tau = inf`` without decay).

    These are *effective* per-group values (after the muP/CompleteP multipliers): what the
    optimizer's param group holds, not inputs to :func:`fxparam.optimizer`.

    Attributes:
        name: group name (``hidden``, ``embedding``, ``vector`` or the caller's).
        lr: peak effective LR of the group.
        weight_decay: effective coupled weight decay of the group (0 = none).
        tau: ``B/(lr * weight_decay * D)``; ``inf`` for no decay.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    name: str
    lr: float
    weight_decay: float
    tau: float


class Recipe(BaseModel):
    """A hyperparameter recipe (frozen, JSON round-trips). Produced by :func:`recommend`.

    Units: ``lr`` and ``weight_decay`` are base hyperparameters in the units of
    :func:`fxparam.optimizer` (``fxparam.optimizer(model, torch.optim.AdamW, recipe=r)`` uses them);
    ``hidden_lr``/``hidden_weight_decay`` and ``groups`` hold the effective per-group values the
    plan's multipliers produce from them (hidden: ``lr / m_d``, ``weight_decay * m_d``).

    Attributes:
        version: schema version (2: ``lr``/``weight_decay`` are base values; version 1 stored the
            hidden effective values under those names and is refused).
        params: model parameters N.
        tokens: training tokens D.
        tpp: tokens per parameter D/N.
        seq_len: sequence length.
        batch_size: batch size B in sequences.
        batch_tokens: B in tokens.
        steps: optimizer updates ``round(D / B)``.
        warmup_steps: warmup updates.
        schedule: the LR schedule (D2Z by default).
        width_multiplier: ``m_d = d_model / d_model_proxy`` the recipe assumed.
        lr: base peak LR (``fxparam.optimizer(lr=)``; the proxy model's tuned LR).
        weight_decay: base coupled weight decay lambda (``fxparam.optimizer(weight_decay=)``): the
            caller's, else ``lambda_opt``.
        hidden_lr: peak effective LR of the hidden weights, ``lr / m_d`` (the ``eta`` of tau).
        hidden_weight_decay: effective weight decay of the hidden weights, ``weight_decay * m_d``.
        tau: the AdamW timescale of the hidden weights, ``B / (hidden_lr * hidden_weight_decay * D)``.
        tau_opt: ``c_tau * TPP**m_tau``.
        lambda_opt: the base lambda that gives ``tau_opt`` at this B.
        b_opt: ``B_opt`` in sequences of ``seq_len`` (before rounding).
        b_crit_tokens: the critical batch in tokens, when known.
        groups: per-group peak LR, weight decay and tau.
        warnings: things to look at (B above B_crit, tau far from tau_opt...).
        constants: the law constants used.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    version: Literal[2] = 2
    params: float
    tokens: float
    tpp: float
    seq_len: int
    batch_size: int
    batch_tokens: int
    steps: int
    warmup_steps: int
    schedule: Schedule
    width_multiplier: float = 1.0
    lr: float
    weight_decay: float
    hidden_lr: float
    hidden_weight_decay: float
    tau: float
    tau_opt: float
    lambda_opt: float
    b_opt: float
    b_crit_tokens: float | None = None
    groups: tuple[GroupRecipe, ...] = Field(default_factory=tuple)
    warnings: tuple[str, ...] = Field(default_factory=tuple)
    constants: LawConstants = Field(default_factory=lambda: LawConstants())

    @model_validator(mode="before")
    @classmethod
    def _refuse_v1(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("version") == 1:
            raise ValueError(
                "recipe JSON version 1 stored the hidden weights' effective lr/weight_decay under 'lr' and "
                "'weight_decay'; version 2 stores base values (fxparam.optimizer units): re-run recommend()"
            )
        return data

    def table(self) -> str:
        """A plain-text table of the recipe (what ``fxparam recipe`` prints)."""
        sched = self.schedule
        kind = "d2z" if sched.kind == "linear" and sched.final_fraction == 0 else sched.kind
        rows = [
            ("params N", f"{self.params:.4g}"),
            ("tokens D", f"{self.tokens:.4g}"),
            ("tokens/param TPP", f"{self.tpp:.2f}"),
            ("seq len", f"{self.seq_len}"),
            ("batch B", f"{self.batch_size} seq = {self.batch_tokens:,} tokens (B_opt {self.b_opt:.1f} seq)"),
            ("B_crit", "unknown" if self.b_crit_tokens is None else f"{self.b_crit_tokens:,.0f} tokens"),
            ("steps", f"{self.steps:,}"),
            ("warmup", f"{self.warmup_steps:,} steps"),
            ("schedule", f"{kind} (final {sched.final_fraction:g} x peak)"),
            ("width multiplier m_d", f"{self.width_multiplier:.4g}"),
            ("base LR", f"{self.lr:.4g}  -> fxparam.optimizer(lr=)"),
            ("base weight decay", f"{self.weight_decay:.4g}  -> fxparam.optimizer(weight_decay=) "
                                  f"(lambda_opt {self.lambda_opt:.4g})"),
            ("hidden LR", f"{self.hidden_lr:.4g} (= base LR / m_d, effective)"),
            ("hidden weight decay", f"{self.hidden_weight_decay:.4g} (= base weight decay x m_d, effective)"),
            ("tau (hidden)", f"{self.tau:#.4g} (tau_opt {self.tau_opt:#.4g})"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines += ["", "effective per-group values (what fxparam.optimizer's param groups hold):",
                  f"{'group':<12}{'peak LR':>12}{'weight decay':>14}{'tau':>10}"]
        for g in self.groups:
            t = "inf" if math.isinf(g.tau) else f"{g.tau:#.4g}"
            lines.append(f"{g.name:<12}{g.lr:>12.4g}{g.weight_decay:>14.4g}{t:>10}")
        if self.warnings:
            lines += [""] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def recommend(
    *,
    params: float,
    tokens: float | None = None,
    tpp: float | None = None,
    seq_len: int = 2048,
    lr: float | None = None,
    base_lr: float | None = None,
    width_multiplier: float = 1.0,
    batch_size: int | None = None,
    weight_decay: float | None = None,
    schedule: str = "d2z",
    b_crit_coefficient: float | None = None,
    b_crit_measured: tuple[float, float] | None = None,
    groups: Mapping[str, tuple[float | None, bool]] | None = None,
    tau_tolerance: float = 1.5,
    constants: LawConstants | None = None,
) -> Recipe:
    """Recommend batch size, weight decay, warmup and schedule from N, D and the learning rate.

    The peak LR of the hidden weights is ``lr``, or ``base_lr / width_multiplier`` (muP/CompleteP
    with Adam). B defaults to ``B_opt(D)`` rounded to whole sequences; the hidden weights' decay
    defaults to ``B / (hidden_lr * D * tau_opt(TPP))``, so that tau = tau_opt. Warmup is
    ``constants.warmup_fraction`` of the steps and the schedule is D2Z.

    Units: ``weight_decay`` (input and output) and the output ``lr`` are *base* values, the units
    :func:`fxparam.optimizer` takes: hidden weights decay with ``weight_decay * width_multiplier``
    (the muP/CompleteP Adam table, docs/reference/parameterizations.md). Hand the result straight
    to ``fxparam.optimizer(model, torch.optim.AdamW, recipe=r)``.

    Args:
        params: model parameters N.
        tokens: training tokens D (or give ``tpp``).
        tpp: tokens per parameter (D = tpp * N).
        seq_len: sequence length in tokens.
        lr: peak effective LR of the hidden weights (instead of ``base_lr``).
        base_lr: the tuned base LR of the proxy model; with ``width_multiplier`` gives ``lr``.
        width_multiplier: ``d_model / d_model_proxy``.
        batch_size: B in sequences (default: ``B_opt``).
        weight_decay: base coupled weight decay lambda, as given to ``fxparam.optimizer``
            (default: ``lambda_opt``); must be > 0. Hidden weights decay with ``lambda * m_d``.
        schedule: a schedule name (``d2z``, ``linear``, ``cosine``, ``wsd``, ``constant``).
        b_crit_coefficient, b_crit_measured: the critical batch, if known (see :func:`b_crit`).
        groups: ``{name: (lr_multiplier or None for 1/width_multiplier, has_decay)}``, multipliers
            relative to ``base_lr`` (or ``lr * width_multiplier``); a ``None`` group (hidden rule)
            decays with ``weight_decay * width_multiplier``, the others with ``weight_decay``;
            default :data:`DEFAULT_GROUPS`.
        tau_tolerance: warn when tau is outside ``[tau_opt / tol, tau_opt * tol]``.
        constants: law constants (default :class:`LawConstants`).

    Raises:
        RecipeError: missing or inconsistent inputs (both or neither of ``lr``/``base_lr``, of
            ``tokens``/``tpp``), non-positive values, ``weight_decay == 0``, or ``B > D``.

    Example:
        >>> r = recommend(params=610e6, tokens=48.5e9, seq_len=2048, base_lr=1.62e-2,
        ...               width_multiplier=8, batch_size=504, weight_decay=0.1 / 8)
        >>> round(r.hidden_lr, 6), round(r.hidden_weight_decay, 6), round(r.tau, 3)
        (0.002025, 0.1, 0.105)
        >>> r.lr, r.weight_decay  # base values: fxparam.optimizer(model, AdamW, recipe=r) uses them
        (0.0162, 0.0125)
    """
    where = "recommend"
    k = constants or LawConstants()
    n = positive(params, "params", where, "N is the number of model parameters")
    if (tokens is None) == (tpp is None):
        raise RecipeError(f"{where}: give exactly one of tokens= (D) or tpp= (D/N)")
    d = positive(tokens, "tokens", where) if tokens is not None else n * positive(tpp, "tpp", where)
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len <= 0:
        raise RecipeError(f"{where}: seq_len must be a positive integer, got {seq_len!r}")
    seq = int(seq_len)
    m = positive(width_multiplier, "width_multiplier", where, "d_model / proxy d_model")
    if (lr is None) == (base_lr is None):
        raise RecipeError(
            f"{where}: give exactly one of lr= (peak effective LR of the hidden weights) or base_lr= "
            "(with width_multiplier=)"
        )
    base = positive(base_lr, "base_lr", where) if base_lr is not None else positive(lr, "lr", where) * m
    eta = base / m
    if weight_decay is not None and float(weight_decay) == 0:
        raise RecipeError(
            f"{where}: weight_decay=0 makes tau infinite; omit weight_decay to get lambda_opt, or give lambda > 0"
        )
    if schedule not in SCHEDULE_NAMES:
        raise RecipeError(
            f"{where}: unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULE_NAMES)}"
        )
    tol = positive(tau_tolerance, "tau_tolerance", where)
    if tol < 1:
        raise RecipeError(f"{where}: tau_tolerance is a factor >= 1, got {tau_tolerance}")

    bopt = b_opt(d, seq_len=seq, c_b=k.c_b, m_b=k.m_b, unit_seq_len=k.b_unit_seq_len)
    if batch_size is None:
        bs = max(1, round(bopt))
    else:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
            raise RecipeError(
                f"{where}: batch_size is in sequences and must be a positive integer, got {batch_size!r}"
            )
        bs = int(batch_size)
    b_tok = bs * seq
    if b_tok > d:
        raise RecipeError(
            f"{where}: the batch ({bs} x {seq} = {b_tok:,} tokens) is larger than tokens={d:.4g}; "
            "lower batch_size or train on more tokens"
        )
    steps = max(1, round(d / b_tok))
    t_opt = tau_opt(d / n, c_tau=k.c_tau, m_tau=k.m_tau)
    # lambda_opt is the hidden weights' effective decay; the base lambda (fxparam.optimizer units) is /m.
    lam_opt = lambda_opt(lr=eta, batch_tokens=b_tok, total_tokens=d, params=n, c_tau=k.c_tau, m_tau=k.m_tau) / m
    lam = lam_opt if weight_decay is None else positive(weight_decay, "weight_decay", where)
    lam_hidden = lam * m
    t = b_tok / (eta * lam_hidden * d)

    warnings: list[str] = []
    bcrit = None
    if b_crit_coefficient is not None or b_crit_measured is not None:
        bcrit = b_crit(d, coefficient=b_crit_coefficient, measured=b_crit_measured, m_bcrit=k.m_bcrit)
        if b_tok > bcrit:
            warnings.append(
                f"batch {b_tok:,} tokens is above B_crit ~ {bcrit:,.0f} tokens: more tokens are needed for the "
                "same loss; lower batch_size"
            )
    if not t_opt / tol <= t <= t_opt * tol:
        warnings.append(
            f"tau = {t:#.4g} is far from tau_opt = {t_opt:#.4g} (factor {max(t / t_opt, t_opt / t):.2f}); "
            f"use weight_decay = {lam_opt:.4g} (base, fxparam.optimizer units) to hold tau at its optimum"
        )
    if eta * lam_hidden >= 1:
        warnings.append(
            f"hidden lr * weight_decay = {eta * lam_hidden:.3g} >= 1: the decay wipes the weights every step"
        )

    group_specs: Mapping[str, tuple[float | None, bool]] = DEFAULT_GROUPS if groups is None else groups
    out_groups = []
    for name, spec in group_specs.items():
        if not (isinstance(spec, Sequence) and len(spec) == 2):
            raise RecipeError(
                f"{where}: groups[{name!r}] must be (lr_multiplier or None, has_decay), got {spec!r}"
            )
        mult = 1.0 / m if spec[0] is None else positive(spec[0], f"groups[{name!r}] lr multiplier", where)
        g_lr = base * mult
        g_lam = (lam_hidden if spec[0] is None else lam) if spec[1] else 0.0
        out_groups.append(
            GroupRecipe(
                name=name,
                lr=g_lr,
                weight_decay=g_lam,
                tau=math.inf if g_lam == 0 else b_tok / (g_lr * g_lam * d),
            )
        )
    sched = make_schedule(
        schedule, total_steps=steps, warmup_steps=min(round(k.warmup_fraction * steps), max(steps - 1, 0))
    )
    return Recipe(
        params=n,
        tokens=d,
        tpp=d / n,
        seq_len=seq,
        batch_size=bs,
        batch_tokens=b_tok,
        steps=steps,
        warmup_steps=sched.warmup_steps,
        schedule=sched,
        width_multiplier=m,
        lr=base,
        weight_decay=lam,
        hidden_lr=eta,
        hidden_weight_decay=lam_hidden,
        tau=t,
        tau_opt=t_opt,
        lambda_opt=lam_opt,
        b_opt=bopt,
        b_crit_tokens=bcrit,
        groups=tuple(out_groups),
        warnings=tuple(warnings),
        constants=k,
    )
