"""Learning-rate schedules: warmup + linear decay to zero (D2Z), R x linear, cosine, WSD, constant.

Every schedule is a *multiplier* ``m(t)`` with peak 1, so that a parameter group's learning rate
at update ``t`` is ``initial_lr_of_that_group * m(t)``. That is exactly how
:class:`torch.optim.lr_scheduler.LambdaLR` works, so per-group LR multipliers set by muP /
CompleteP (hidden weights at ``base_lr / width_multiplier``, embeddings at ``base_lr``...) keep
their ratios at every step.

Step convention: ``t = 0, 1, ..., T-1`` indexes the ``T`` optimizer updates, which is the index
``LambdaLR`` passes (``scheduler.step()`` after every ``optimizer.step()``). Warmup covers updates
``0 .. W-1`` with ``m = (t+1)/W`` (linear from 0, peak reached at ``t = W-1``); the decay phase
then goes from the peak to exactly ``final_fraction`` at the last update ``t = T-1`` and holds it
afterwards. D2Z ("Straight to Zero", Bergsma et al., ICLR 2025) is linear decay with
``final_fraction = 0``: the last update has learning rate exactly 0. A "10x decay" baseline is
``final_fraction = 1/10``.

Example:
    >>> import torch
    >>> from fxparam.recipes import schedules
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = torch.optim.AdamW([{"params": [w], "lr": 1e-3}], weight_decay=0.1)
    >>> sched = schedules.d2z(opt, total_steps=100, warmup_steps=10)
    >>> schedules.lr_values("d2z", total_steps=5, warmup_steps=1, peak_lr=2.0).tolist()
    [2.0, 2.0, 1.3333333333333335, 0.6666666666666667, 0.0]
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch.optim.lr_scheduler import LambdaLR

from fxparam.errors import RecipeError

#: Warmup length as a fraction of the run when ``warmup_steps`` is not given: 10% of the steps,
#: as in the Cerebras D2Z runs (Bergsma et al., ICLR 2025). (default, recalibrate)
DEFAULT_WARMUP_FRACTION = 0.1

#: Fraction of the run spent in the WSD cooldown when not given (a common choice, not a law).
DEFAULT_WSD_DECAY_FRACTION = 0.2

ScheduleKind = Literal["linear", "cosine", "wsd", "constant"]

#: Names accepted wherever a :class:`Schedule` is expected; each is a default config.
SCHEDULE_NAMES = ("d2z", "linear", "cosine", "wsd", "constant")


class Schedule(BaseModel):
    """A learning-rate schedule shape: multipliers with peak 1 over ``total_steps`` updates.

    A ``Schedule`` is callable (``schedule(t) -> float``) so it can be handed straight to
    ``LambdaLR``; its state then round-trips through ``scheduler.state_dict()``.

    Attributes:
        version: schema version of this config.
        kind: ``"linear"`` (linear decay after warmup; D2Z when ``final_fraction == 0``),
            ``"cosine"`` (half-cosine decay), ``"wsd"`` (warmup-stable-decay: flat at the peak,
            then a linear cooldown over the last ``decay_fraction`` of the run) or ``"constant"``.
        total_steps: number of optimizer updates ``T`` (> 0).
        warmup_steps: number of linear-warmup updates ``W`` (``0 <= W < T``).
        final_fraction: the multiplier at the last update, ``1/R`` for an ``R x`` decay
            (0 = decay to zero, D2Z). Ignored by ``"constant"``.
        decay_fraction: WSD only: the cooldown length as a fraction of ``total_steps``.

    Example:
        >>> s = Schedule(kind="linear", total_steps=4, warmup_steps=0, final_fraction=0.0)
        >>> [s(t) for t in range(5)]
        [1.0, 0.6666666666666667, 0.33333333333333337, 0.0, 0.0]
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    kind: ScheduleKind = Field(default="linear", description="Shape of the decay phase.")
    total_steps: int = Field(gt=0, description="Number of optimizer updates T.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup updates W (0 <= W < T).")
    final_fraction: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Multiplier at the last update (1/R; 0 = decay to zero)."
    )
    decay_fraction: float = Field(
        default=DEFAULT_WSD_DECAY_FRACTION, gt=0.0, le=1.0, description="WSD cooldown fraction of the run."
    )

    @model_validator(mode="after")
    def _check_lengths(self) -> Schedule:
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be smaller than total_steps={self.total_steps}; "
                f"use about {DEFAULT_WARMUP_FRACTION:.0%} of the steps"
            )
        if self.kind == "wsd" and self.cooldown_steps > self.total_steps - self.warmup_steps:
            raise ValueError(
                f"WSD cooldown of {self.cooldown_steps} steps (decay_fraction={self.decay_fraction}) "
                f"overlaps the {self.warmup_steps} warmup steps of a {self.total_steps}-step run; "
                "lower decay_fraction or warmup_steps"
            )
        return self

    @property
    def cooldown_steps(self) -> int:
        """WSD cooldown length in updates: ``max(1, round(decay_fraction * total_steps))``."""
        return max(1, round(self.decay_fraction * self.total_steps))

    def __call__(self, step: int) -> float:
        """The multiplier for update ``step`` (0-based; steps past the end hold the final value)."""
        return float(self.values(np.asarray([step]))[0])

    def values(self, steps: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """Multipliers for many updates at once (default: all ``total_steps`` of them).

        Example:
            >>> Schedule(kind="constant", total_steps=3, warmup_steps=2).values().tolist()
            [0.5, 1.0, 1.0]
        """
        t = np.arange(self.total_steps) if steps is None else np.asarray(steps)
        if t.size and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0):
            raise RecipeError(
                f"Schedule: steps must be non-negative integers (0-based update index), got {t!r}"
            )
        t = t.astype(np.float64)
        T, W, f = self.total_steps, self.warmup_steps, self.final_fraction
        if self.kind == "constant":
            decay = np.ones_like(t)
        elif self.kind == "wsd":
            start = T - self.cooldown_steps
            p = np.clip((t - start + 1) / self.cooldown_steps, 0.0, 1.0)
            decay = 1.0 - (1.0 - f) * p
        else:
            n_decay = T - W  # >= 1 updates from the peak to the final value
            p = np.clip((t - W) / max(n_decay - 1, 1), 0.0, 1.0)
            p = np.where(t >= T - 1, 1.0, p)  # a 1-step decay phase is the final value
            if self.kind == "linear":
                decay = 1.0 - (1.0 - f) * p
            else:  # cosine; cos(pi) == -1.0 exactly, so the last update is exactly f
                decay = f + (1.0 - f) * 0.5 * (1.0 + np.cos(math.pi * p))
        warm = (t + 1.0) / max(W, 1)
        out = np.where(t < W, warm, decay)
        if self.kind != "constant":
            out = np.where(t >= T - 1, f, out)  # exact final value, e.g. exactly 0 for D2Z
        return out.astype(np.float64)


def _warmup(total_steps: int, warmup_steps: int | None) -> int:
    if warmup_steps is not None:
        return warmup_steps
    return int(round(DEFAULT_WARMUP_FRACTION * total_steps)) if total_steps > 1 else 0


def _final_fraction(decay_factor: float, where: str) -> float:
    try:
        r = float(decay_factor)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: decay_factor must be a number >= 1, got {decay_factor!r}") from None
    if math.isnan(r) or r < 1.0:
        raise RecipeError(
            f"{where}: decay_factor R (peak LR / final LR) must be >= 1 (math.inf for decay to zero), "
            f"got {decay_factor!r}"
        )
    return 0.0 if math.isinf(r) else 1.0 / r


def make_schedule(
    name: str | Schedule,
    *,
    total_steps: int | None = None,
    warmup_steps: int | None = None,
    decay_factor: float | None = None,
    decay_fraction: float | None = None,
) -> Schedule:
    """Build a :class:`Schedule` from a short name (or return a given one unchanged).

    Names: ``"d2z"`` (linear to zero), ``"linear"`` (linear to ``1/decay_factor``, default 10x),
    ``"cosine"`` (default 10x), ``"wsd"`` (default: cooldown over the last 20%, to zero),
    ``"constant"``. ``warmup_steps`` defaults to 10% of ``total_steps``.

    Args:
        name: one of the names above, or a ``Schedule`` (then no other argument may be given).
        total_steps: number of optimizer updates.
        warmup_steps: linear warmup updates (default 10% of the run).
        decay_factor: ``R`` = peak / final LR (``math.inf`` = to zero).
        decay_fraction: WSD cooldown as a fraction of the run.

    Raises:
        RecipeError: unknown name, or invalid lengths / factors.

    Example:
        >>> make_schedule("d2z", total_steps=1000).warmup_steps
        100
    """
    where = f"make_schedule({name!r})" if isinstance(name, str) else "make_schedule"
    if isinstance(name, Schedule):
        given = [total_steps, warmup_steps, decay_factor, decay_fraction]
        if any(v is not None for v in given):
            raise RecipeError(
                "make_schedule: got a Schedule and overrides; use schedule.model_copy(update=...) "
                "or pass a schedule name"
            )
        return name
    if name not in SCHEDULE_NAMES:
        raise RecipeError(
            f"make_schedule: unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}"
        )
    if total_steps is None:
        raise RecipeError(f"{where}: total_steps is required (the number of optimizer updates)")
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps <= 0:
        raise RecipeError(f"{where}: total_steps must be a positive integer, got {total_steps!r}")
    kwargs: dict[str, Any] = {
        "total_steps": int(total_steps),
        "warmup_steps": _warmup(int(total_steps), warmup_steps),
    }
    if name == "d2z":
        if decay_factor is not None and not math.isinf(decay_factor):
            raise RecipeError(f"{where}: D2Z decays to zero; use 'linear' for decay_factor={decay_factor}")
        kwargs.update(kind="linear", final_fraction=0.0)
    elif name in ("linear", "cosine"):
        kwargs.update(
            kind=name, final_fraction=_final_fraction(10.0 if decay_factor is None else decay_factor, where)
        )
    elif name == "wsd":
        kwargs.update(
            kind="wsd",
            final_fraction=_final_fraction(math.inf if decay_factor is None else decay_factor, where),
        )
        if decay_fraction is not None:
            kwargs["decay_fraction"] = decay_fraction
    else:
        kwargs.update(kind="constant")
    if decay_fraction is not None and name != "wsd":
        raise RecipeError(f"{where}: decay_fraction only applies to 'wsd'")
    try:
        return Schedule(**kwargs)
    except ValidationError as exc:
        msgs = "; ".join(str(e["msg"]) for e in exc.errors())
        raise RecipeError(f"{where}: {msgs}") from None


def lr_values(
    schedule: str | Schedule,
    *,
    peak_lr: float = 1.0,
    total_steps: int | None = None,
    warmup_steps: int | None = None,
    decay_factor: float | None = None,
    decay_fraction: float | None = None,
) -> npt.NDArray[np.float64]:
    """The learning rate ``eta_t`` of every update as a numpy array (``peak_lr * m(t)``).

    Args:
        schedule: a :class:`Schedule` or a name (see :func:`make_schedule`).
        peak_lr: the peak learning rate (1.0 returns the multipliers).
        total_steps, warmup_steps, decay_factor, decay_fraction: as in :func:`make_schedule`.

    Example:
        >>> lr_values("linear", total_steps=3, warmup_steps=0, decay_factor=10, peak_lr=1.0).tolist()
        [1.0, 0.55, 0.1]
    """
    sched = make_schedule(
        schedule,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        decay_factor=decay_factor,
        decay_fraction=decay_fraction,
    )
    if not (isinstance(peak_lr, (int, float)) and math.isfinite(peak_lr) and peak_lr >= 0):
        raise RecipeError(f"lr_values: peak_lr must be a finite number >= 0, got {peak_lr!r}")
    return float(peak_lr) * sched.values()


#: What :class:`ScheduleLR` does when a checkpoint's schedule differs from the one it was built with.
OnResize = Literal["raise", "rescale", "continue"]


class ScheduleLR(LambdaLR):
    """A ``LambdaLR`` over one :class:`Schedule` that refuses to silently resume a different schedule.

    ``LambdaLR.load_state_dict`` copies the saved schedule over the new one, so resuming a D2Z run
    with a longer ``total_steps`` would keep the old length and train on at LR 0. ``ScheduleLR``
    compares the saved schedule with its own and, per ``on_resize``:

    - ``"raise"`` (default): :class:`~fxparam.errors.RecipeError` naming both schedules;
    - ``"rescale"``: keep the new schedule and map the step to the same fraction of the run,
      ``t_new = round(t_old * T_new / T_old)`` (the LR continues from where it was, then decays
      over the longer run);
    - ``"continue"``: keep the new schedule at the saved step ``t_old`` (the LR jumps to the new
      schedule's value at that step).

    The group LRs are set from the new schedule right away in both cases.

    Args:
        optimizer: any torch optimizer; each group's ``lr`` at construction is its peak LR.
        schedule: the :class:`Schedule`.
        on_resize: ``"raise"``, ``"rescale"`` or ``"continue"``.

    Raises:
        RecipeError: unknown ``on_resize``; on ``load_state_dict`` with a different saved schedule
            and ``on_resize="raise"``, or with ``"continue"`` when the saved step is at or past the new
            schedule's end (the run would go on at its final LR, 0 for D2Z).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, *, on_resize: OnResize = "raise") -> None:
        if on_resize not in ("raise", "rescale", "continue"):
            raise RecipeError(f"ScheduleLR: on_resize must be 'raise', 'rescale' or 'continue', got {on_resize!r}")
        self._fx_schedule = schedule
        self._fx_on_resize = on_resize
        super().__init__(optimizer, lr_lambda=schedule)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_fx_schedule", None)
        state.pop("_fx_on_resize", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mine = self._fx_schedule
        saved = [fn for fn in state_dict.get("lr_lambdas", []) if fn is not None]
        fields = mine.model_dump()
        if not saved or all({k: fn.get(k) for k in fields} == fields for fn in saved):
            super().load_state_dict(state_dict)
            return
        try:
            old = Schedule(**{k: v for k, v in saved[0].items() if k in fields})
        except ValidationError:
            old = None
        t_old = int(state_dict.get("last_epoch", 0))
        if self._fx_on_resize == "raise":
            raise RecipeError(
                f"ScheduleLR.load_state_dict: the checkpoint's schedule ({_describe(old, saved[0])}, at update "
                f"{t_old}) differs from this run's ({_describe(mine, fields)}); a plain LambdaLR would silently keep "
                "the old one. Pass on_resize='rescale' (same fraction of the run) or 'continue' (same step) to "
                "the scheduler, or build it with the checkpoint's schedule"
            )
        rescale = self._fx_on_resize == "rescale" and old is not None
        t_new = round(t_old * mine.total_steps / old.total_steps) if rescale else t_old
        if t_new >= mine.total_steps:
            raise RecipeError(
                f"ScheduleLR.load_state_dict: the checkpoint is at update {t_old}, which is at or past the end of "
                f"this run's schedule ({_describe(mine, fields)}) under on_resize={self._fx_on_resize!r}: training "
                "would continue at the schedule's final LR (0 for D2Z). Give a total_steps larger than "
                f"{t_new}, or on_resize='rescale'"
            )
        state = {k: v for k, v in state_dict.items() if k != "lr_lambdas"}
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)  # keep this run's schedule
        super().load_state_dict(state)
        self.last_epoch = t_new
        values = [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas, strict=True)]
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = values


def _describe(schedule: Schedule | None, fields: dict[str, Any]) -> str:
    if schedule is None:
        return f"{fields}"
    return (
        f"{schedule.kind}, total_steps={schedule.total_steps}, warmup_steps={schedule.warmup_steps}, "
        f"final_fraction={schedule.final_fraction:g}"
    )


def scheduler(
    optimizer: torch.optim.Optimizer, schedule: str | Schedule, *, on_resize: OnResize = "raise", **kwargs: Any
) -> ScheduleLR:
    """A ``LambdaLR`` applying ``schedule`` to every param group relative to its own initial LR.

    Args:
        optimizer: any torch optimizer; each group's ``lr`` at construction is its peak LR.
        schedule: a :class:`Schedule` or a name; ``kwargs`` go to :func:`make_schedule`.
        on_resize: what ``load_state_dict`` does with a checkpoint of a different schedule (e.g. a
            resume with a longer D2Z run): ``"raise"``, ``"rescale"`` or ``"continue"`` (see
            :class:`ScheduleLR`).

    Raises:
        RecipeError: not an optimizer; bad schedule arguments; see :class:`ScheduleLR`.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([w], lr=0.5)
        >>> sched = scheduler(opt, "cosine", total_steps=10, warmup_steps=0)
        >>> opt.param_groups[0]["lr"]
        0.5
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise RecipeError(
            f"scheduler: expected a torch.optim.Optimizer, got {type(optimizer).__name__}; "
            "build the optimizer first, then the scheduler"
        )
    return ScheduleLR(optimizer, make_schedule(schedule, **kwargs), on_resize=on_resize)


def d2z(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    on_resize: OnResize = "raise",
) -> ScheduleLR:
    """Warmup then linear decay to exactly zero at the last update (D2Z), as a ``LambdaLR``.

    Args:
        optimizer: the optimizer; each group keeps its own peak LR (muP multipliers survive).
        total_steps: number of optimizer updates.
        warmup_steps: linear warmup updates (default 10% of ``total_steps``).
        on_resize: resuming a checkpoint of a different schedule: ``"raise"``, ``"rescale"`` or
            ``"continue"`` (see :class:`ScheduleLR`).

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.AdamW([w], lr=1e-3)
        >>> sched = d2z(opt, total_steps=1000, warmup_steps=100)
    """
    return scheduler(optimizer, "d2z", total_steps=total_steps, warmup_steps=warmup_steps, on_resize=on_resize)


def linear_decay(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    decay_factor: float = 10.0,
) -> LambdaLR:
    """Warmup then linear decay to ``peak / decay_factor`` (the "10x" baseline by default).

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> sched = linear_decay(torch.optim.AdamW([w], lr=1e-3), total_steps=100, decay_factor=10)
    """
    return scheduler(
        optimizer, "linear", total_steps=total_steps, warmup_steps=warmup_steps, decay_factor=decay_factor
    )


def cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    decay_factor: float = 10.0,
) -> LambdaLR:
    """Warmup then half-cosine decay to ``peak / decay_factor``.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> sched = cosine(torch.optim.AdamW([w], lr=1e-3), total_steps=100)
    """
    return scheduler(
        optimizer, "cosine", total_steps=total_steps, warmup_steps=warmup_steps, decay_factor=decay_factor
    )


def wsd(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    decay_fraction: float = DEFAULT_WSD_DECAY_FRACTION,
    decay_factor: float = math.inf,
) -> LambdaLR:
    """Warmup-stable-decay: warmup, flat at the peak, linear cooldown over the last ``decay_fraction``.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> sched = wsd(torch.optim.AdamW([w], lr=1e-3), total_steps=100, decay_fraction=0.2)
    """
    return scheduler(
        optimizer,
        "wsd",
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        decay_fraction=decay_fraction,
        decay_factor=decay_factor,
    )


def constant(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Warmup then a constant LR (no warmup by default).

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> sched = constant(torch.optim.AdamW([w], lr=1e-3), total_steps=100)
    """
    return scheduler(optimizer, "constant", total_steps=total_steps, warmup_steps=warmup_steps)


__all__ = [
    "DEFAULT_WARMUP_FRACTION",
    "DEFAULT_WSD_DECAY_FRACTION",
    "SCHEDULE_NAMES",
    "Schedule",
    "ScheduleLR",
    "constant",
    "cosine",
    "d2z",
    "linear_decay",
    "lr_values",
    "make_schedule",
    "scheduler",
    "wsd",
]
