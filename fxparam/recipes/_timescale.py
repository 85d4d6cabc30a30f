"""The AdamW timescale and the Power Lines laws (Bergsma et al., NeurIPS 2025, arXiv 2505.13738).

``tau_iter = 1/(eta*lambda)`` updates; as a fraction of the run, ``tau = tau_iter / S = B/(eta*lambda*D)``
with ``S = D/B`` steps. ``eta`` is the *peak, effective* LR of the group (after muP/CompleteP
multipliers), ``lambda`` the coupled weight decay; B and D in tokens. No decay: ``tau = inf``.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.optim.lr_scheduler import LambdaLR

from fxparam.errors import RecipeError
from fxparam.recipes._constants import B_UNIT_SEQ_LEN, C_B, C_TAU, M_B, M_BCRIT, M_TAU
from fxparam.recipes._ema import ScheduleLike, check_decoupled, group_ema_profiles, peak_lr_of
from fxparam.recipes._validate import batch_and_tokens, number, positive
from fxparam.recipes.schedules import Schedule


def tau(*, lr: float, weight_decay: float, batch_tokens: float, total_tokens: float) -> float:
    """The AdamW timescale as a fraction of the run, ``tau = B / (eta * lambda * D)``.

    Args:
        lr: peak effective learning rate ``eta`` of the group (after muP multipliers).
        weight_decay: coupled weight decay ``lambda`` (> 0).
        batch_tokens: batch size B in tokens.
        total_tokens: training tokens D.

    Raises:
        RecipeError: ``weight_decay == 0`` (tau is infinite: use :func:`timescale` on the optimizer,
            which reports ``inf`` for no-decay groups), non-positive inputs, or ``B > D``.

    Example:
        >>> round(tau(lr=2.025e-3, weight_decay=0.1, batch_tokens=504 * 2048, total_tokens=48.5e9), 3)
        0.105
    """
    where = "tau"
    b, d = batch_and_tokens(batch_tokens, total_tokens, where)
    eta = positive(lr, "lr", where, "use the peak, effective LR of the group")
    lam = number(weight_decay, "weight_decay", where)
    if lam == 0:
        raise RecipeError(
            f"{where}: weight_decay is 0, so tau = B/(eta*lambda*D) is infinite (the weights never forget "
            "their initialisation); pass weight_decay > 0, or call timescale(optimizer, ...) which "
            "reports tau = inf for no-decay groups"
        )
    lam = positive(lam, "weight_decay", where)
    return b / (eta * lam * d)


class GroupTimescale(BaseModel):
    """The timescale of one param group (frozen; ``inf`` serialises as the string ``"Infinity"``).

    Attributes:
        group: index in ``optimizer.param_groups``.
        name: the group's ``"name"`` entry, if any.
        peak_lr: the group's peak LR ``eta`` (``initial_lr`` if a scheduler set it, else ``lr``).
        weight_decay: the group's ``lambda``.
        steps: ``S = D / B`` updates.
        tau: ``B/(eta*lambda*D)`` as a fraction of the run; ``inf`` when the group has no decay.
        tau_iters: ``1/(eta*lambda)`` in updates; ``inf`` when no decay.
        initial_weight: ``c_{T,0}`` under the schedule (when a schedule was given).
        effective_updates: ``1/sum c_{T,i}^2`` under the schedule (when a schedule was given).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    group: int
    name: str | None = None
    peak_lr: float
    weight_decay: float
    steps: float
    tau: float = Field(description="Fraction of the run; inf for no decay.")
    tau_iters: float
    initial_weight: float | None = None
    effective_updates: float | None = None

    @property
    def decays(self) -> bool:
        """Whether the group has weight decay (finite tau)."""
        return math.isfinite(self.tau)


def timescale(
    optimizer: torch.optim.Optimizer,
    *,
    batch_tokens: float,
    total_tokens: float,
    schedule: ScheduleLike | None = None,
) -> list[GroupTimescale]:
    """The AdamW timescale of every param group of ``optimizer``.

    Args:
        optimizer: an AdamW-style optimizer whose groups hold their peak ``lr`` (or ``initial_lr``)
            and ``weight_decay``.
        batch_tokens: batch size B in tokens.
        total_tokens: training tokens D.
        schedule: optional schedule (a ``Schedule``, a name, the ``LambdaLR`` or a callable); adds the
            EMA summary (``initial_weight``, ``effective_updates``) over ``round(D/B)`` updates.

    Returns:
        One :class:`GroupTimescale` per group, in order; no-decay groups have ``tau == inf``.

    Raises:
        RecipeError: ``B > D``, non-positive sizes, a group with ``lr <= 0`` or negative decay, or
            ``torch.optim.Adam`` with L2 decay.

    Example:
        >>> w, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}],
        ...                         lr=2.025e-3, weight_decay=0.1)
        >>> [round(g.tau, 3) for g in timescale(opt, batch_tokens=504 * 2048, total_tokens=48.5e9)]
        [0.105, inf]
    """
    where = "timescale"
    b, d = batch_and_tokens(batch_tokens, total_tokens, where)
    check_decoupled(optimizer, where)
    steps = d / b
    profiles = None
    if schedule is not None:
        _check_schedule_length(schedule, steps, where)
        profiles = group_ema_profiles(optimizer, schedule, total_steps=max(1, round(steps)))
    out = []
    for i, g in enumerate(optimizer.param_groups):
        eta = positive(peak_lr_of(g), f"param_groups[{i}]['lr']", where)
        lam = number(g.get("weight_decay", 0.0), f"param_groups[{i}]['weight_decay']", where)
        if lam < 0:
            raise RecipeError(f"{where}: param_groups[{i}] has negative weight_decay {lam}")
        t = math.inf if lam == 0 else b / (eta * lam * d)
        out.append(
            GroupTimescale(
                group=i,
                name=g.get("name") if isinstance(g.get("name"), str) else None,
                peak_lr=eta,
                weight_decay=lam,
                steps=steps,
                tau=t,
                tau_iters=math.inf if lam == 0 else 1.0 / (eta * lam),
                initial_weight=None if profiles is None else profiles[i].initial_weight,
                effective_updates=None if profiles is None else profiles[i].effective_updates,
            )
        )
    return out


def _check_schedule_length(schedule: ScheduleLike, steps: float, where: str) -> None:
    """A schedule built for a different run length than D/B is a mistake worth naming."""
    fns = schedule.lr_lambdas if isinstance(schedule, LambdaLR) else [schedule]
    for fn in fns:
        if isinstance(fn, Schedule) and abs(fn.total_steps - steps) > max(1.0, 0.01 * steps):
            raise RecipeError(
                f"{where}: the schedule spans {fn.total_steps} updates but total_tokens / batch_tokens = "
                f"{steps:.0f} steps; build the schedule with total_steps=round(D / B)"
            )


def tau_opt(tpp: float, *, c_tau: float = C_TAU, m_tau: float = M_TAU) -> float:
    """The optimal timescale ``tau_opt = c_tau * TPP**m_tau`` (Power Lines).

    Defaults c_tau = 1.084, m_tau = -0.527 are **(default, recalibrate)**: Power Lines fit on muP
    GPT-2-style models (SlimPajama); the Celerity models used a ~20% lower coefficient.

    Args:
        tpp: tokens per parameter ``D / N``.
        c_tau, m_tau: overrides (e.g. from :func:`fit_power_law` on your own sweep).

    Example:
        >>> round(tau_opt(80), 4)
        0.1077
    """
    where = "tau_opt"
    t = positive(tpp, "tpp", where, "TPP = tokens / parameters")
    return positive(c_tau, "c_tau", where) * t ** number(m_tau, "m_tau", where)


def lambda_opt(
    *,
    lr: float,
    batch_tokens: float,
    total_tokens: float,
    params: float,
    c_tau: float = C_TAU,
    m_tau: float = M_TAU,
) -> float:
    """The weight decay that puts the timescale at its optimum: ``lambda = B/(eta * D * tau_opt(D/N))``.

    At fixed N, D and eta it grows linearly with B: when the batch size changes, rescale lambda
    proportionally to hold tau (instead of retuning eta).

    Args:
        lr: peak effective LR ``eta`` of the group.
        batch_tokens: batch size B in tokens.
        total_tokens: training tokens D.
        params: model parameters N (for TPP = D/N).
        c_tau, m_tau: :func:`tau_opt` overrides.

    Example:
        >>> round(lambda_opt(lr=2.025e-3, batch_tokens=504 * 2048, total_tokens=48.5e9, params=610e6), 4)
        0.0973
    """
    where = "lambda_opt"
    b, d = batch_and_tokens(batch_tokens, total_tokens, where)
    eta = positive(lr, "lr", where, "use the peak, effective LR of the group")
    n = positive(params, "params", where, "N is the number of model parameters")
    return b / (eta * d * tau_opt(d / n, c_tau=c_tau, m_tau=m_tau))


def b_opt(
    total_tokens: float,
    *,
    seq_len: int = B_UNIT_SEQ_LEN,
    c_b: float = C_B,
    m_b: float = M_B,
    unit_seq_len: int = B_UNIT_SEQ_LEN,
) -> float:
    """The optimal batch size in sequences of ``seq_len``: ``c_b * D**m_b`` sequences of 2048 tokens.

    Depends on data, not model size. Defaults c_b = 0.0306, m_b = 0.383 (B in 2048-token sequences,
    D in tokens) are **(default, recalibrate)** from Power Lines; the Celerity recipe followed
    ``B_opt ~ D**0.5``.

    Args:
        total_tokens: training tokens D.
        seq_len: the sequence length to express the answer in.
        c_b, m_b: overrides; ``unit_seq_len`` is the sequence length ``c_b`` was fitted in.

    Returns:
        B_opt in sequences of ``seq_len`` (a float; round as your hardware prefers).

    Example:
        >>> round(b_opt(12.1e9))
        223
    """
    where = "b_opt"
    d = positive(total_tokens, "total_tokens", where)
    s = positive(seq_len, "seq_len", where)
    unit = positive(unit_seq_len, "unit_seq_len", where)
    tokens = positive(c_b, "c_b", where) * d ** number(m_b, "m_b", where) * unit
    return tokens / s


def b_crit(
    total_tokens: float,
    *,
    coefficient: float | None = None,
    measured: tuple[float, float] | None = None,
    m_bcrit: float = M_BCRIT,
) -> float:
    """The critical batch size in tokens, ``B_crit ~ D**m_bcrit`` (Power Lines exponent 0.462).

    No coefficient is published, so give one: either ``coefficient`` (``B_crit = coefficient *
    D**m_bcrit`` tokens) or ``measured = (b_crit_tokens, at_tokens)`` from a gradient-noise-scale
    measurement, which is extrapolated along the exponent.

    Raises:
        RecipeError: neither or both of ``coefficient`` and ``measured`` given, or bad values.

    Example:
        >>> round(b_crit(4e9, measured=(1e6, 1e9)) / 1e6, 3)
        1.897
    """
    where = "b_crit"
    d = positive(total_tokens, "total_tokens", where)
    m = number(m_bcrit, "m_bcrit", where)
    if (coefficient is None) == (measured is None):
        raise RecipeError(
            f"{where}: no B_crit coefficient is published; pass exactly one of coefficient= (tokens at "
            "D**m_bcrit) or measured=(b_crit_tokens, at_tokens) from a GNS measurement"
        )
    if coefficient is not None:
        return positive(coefficient, "coefficient", where) * d**m
    assert measured is not None
    try:
        b_ref, d_ref = measured
    except (TypeError, ValueError):
        raise RecipeError(
            f"{where}: measured must be a pair (b_crit_tokens, at_tokens), got {measured!r}"
        ) from None
    b_ref = positive(b_ref, "measured b_crit_tokens", where)
    d_ref = positive(d_ref, "measured at_tokens", where)
    return b_ref * (d / d_ref) ** m
