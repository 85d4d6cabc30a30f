"""Batch-size schedules driven by tokens (a preset ramp) or by the measured noise scale (online).

The batch size ``B`` (examples, e.g. sequences, per optimizer step, all ranks together) is
realised as gradient-accumulation steps of a fixed micro-batch, so ``B`` is always a multiple
of ``micro_batch_size * world_size``. Both kinds are bounded and monotone (never decrease).

Weight decay: the AdamW timescale ``tau = B / (eta * lambda * D)`` (``docs/reference/hp_laws.md``)
stays fixed at fixed ``eta`` when ``lambda`` grows in proportion to ``B``; the schedule rescales
every parameter group's ``weight_decay`` by ``B / reference_batch_size``.

Usage in a plain loop::

    sched = fxparam.gns.BatchSizeSchedule.online(micro_batch_size=8, min_batch_size=16, max_batch_size=256)
    monitor = fxparam.gns.monitor(model)
    while training:
        for _ in range(sched.accumulation_steps):
            (model(x, y)[1] / sched.accumulation_steps).backward()
        est = monitor.update()
        sched.apply_weight_decay(optimizer)       # before step(): lambda for this step's B
        optimizer.step(); optimizer.zero_grad()
        sched.step(tokens=sched.batch_size * seq_len, estimate=est)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from fxparam.errors import RecipeError

#: Paper run (Gray et al. 2024, nanoGNS ``exact/config/train_cgpt_111M_owt.py``): 111M model, micro-batch 8
#: sequences of 2048 tokens, gradient accumulation ramped linearly in tokens from 2 to 15 steps
#: (16 -> 120 sequences) over the whole run of 2,219,950,080 tokens (~20 tokens/parameter).
PAPER_111M_TOTAL_TOKENS = 2_219_950_080


class BatchSizeSchedule:
    """Batch size per optimizer step, set from tokens seen (ramp) or from the smoothed GNS (online).

    Build with :meth:`token_ramp`, :meth:`paper_111m` or :meth:`online`.

    Attributes:
        kind: ``"ramp"`` or ``"online"``.
        micro_batch_size: examples per micro-batch per rank.
        world_size: data-parallel ranks.
        min_batch_size / max_batch_size: bounds (multiples of ``micro_batch_size * world_size``).
        reference_batch_size: batch size at which the optimizer's weight decay was set.

    Example:
        >>> s = BatchSizeSchedule.token_ramp(micro_batch_size=8, start_batch_size=16, end_batch_size=120,
        ...                                  ramp_tokens=1_000_000)
        >>> s.batch_size, s.accumulation_steps
        (16, 2)
        >>> s.step(tokens=500_000)
        72
        >>> s.step(tokens=10_000_000)
        120
    """

    def __init__(
        self,
        *,
        kind: Literal["ramp", "online"],
        micro_batch_size: int,
        min_batch_size: int,
        max_batch_size: int,
        world_size: int = 1,
        points: Sequence[tuple[float, float]] = (),
        fraction: float = 1.0,
        warmup_steps: int = 10,
        reference_batch_size: int | None = None,
    ) -> None:
        if kind not in ("ramp", "online"):
            raise RecipeError(f"BatchSizeSchedule: kind must be 'ramp' or 'online', got {kind!r}")
        for name, v in (("micro_batch_size", micro_batch_size), ("world_size", world_size)):
            if not isinstance(v, int) or v < 1:
                raise RecipeError(f"BatchSizeSchedule: {name} must be a positive int, got {v!r}")
        self.kind = kind
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        q = micro_batch_size * world_size
        if min_batch_size < 1 or max_batch_size < min_batch_size:
            raise RecipeError(
                f"BatchSizeSchedule: need 1 <= min_batch_size <= max_batch_size, got {min_batch_size}, {max_batch_size}"
            )
        for name, v in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if v % q:
                raise RecipeError(
                    f"BatchSizeSchedule: {name}={v} is not a multiple of micro_batch_size * world_size = {q}; "
                    f"use {math.ceil(v / q) * q}"
                )
        self.min_batch_size = int(min_batch_size)
        self.max_batch_size = int(max_batch_size)
        if not (0.0 < fraction):
            raise RecipeError(f"BatchSizeSchedule: fraction must be > 0, got {fraction}")
        self.fraction = float(fraction)
        if warmup_steps < 0:
            raise RecipeError(f"BatchSizeSchedule: warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.points = [(float(t), float(b)) for t, b in points]
        if kind == "ramp":
            if len(self.points) < 1:
                raise RecipeError("BatchSizeSchedule: a ramp needs at least one (tokens, batch_size) point")
            ts = [t for t, _ in self.points]
            bs = [b for _, b in self.points]
            if any(t2 <= t1 for t1, t2 in zip(ts, ts[1:], strict=False)) or any(
                b2 < b1 for b1, b2 in zip(bs, bs[1:], strict=False)
            ):
                raise RecipeError(
                    f"BatchSizeSchedule: ramp points must have increasing tokens and non-decreasing batch sizes, "
                    f"got {self.points}"
                )
        self.reference_batch_size = int(reference_batch_size or min_batch_size)
        if self.reference_batch_size < 1:
            raise RecipeError(
                f"BatchSizeSchedule: reference_batch_size must be >= 1, got {reference_batch_size}"
            )
        self.tokens_seen: float = 0
        self.steps = 0
        self._batch = self.min_batch_size
        if kind == "ramp":
            self._batch = self._ramp_batch(0.0)
        self._base_wd: dict[int, float] | None = None

    # ---- constructors ------------------------------------------------------------------------

    @classmethod
    def token_ramp(
        cls,
        *,
        micro_batch_size: int,
        start_batch_size: int,
        end_batch_size: int,
        ramp_tokens: float,
        world_size: int = 1,
        reference_batch_size: int | None = None,
    ) -> BatchSizeSchedule:
        """A linear ramp in tokens from ``start_batch_size`` to ``end_batch_size`` over ``ramp_tokens``.

        Between the ends the batch is rounded *up* to a whole number of accumulation steps (as
        the reference code's ``ceil`` of interpolated accumulation steps); after
        ``ramp_tokens`` it stays at ``end_batch_size``.

        Example:
            >>> BatchSizeSchedule.token_ramp(micro_batch_size=4, start_batch_size=8, end_batch_size=32,
            ...                              ramp_tokens=100).batch_size
            8
        """
        if ramp_tokens <= 0:
            raise RecipeError(f"BatchSizeSchedule.token_ramp: ramp_tokens must be > 0, got {ramp_tokens}")
        return cls(
            kind="ramp",
            micro_batch_size=micro_batch_size,
            world_size=world_size,
            min_batch_size=start_batch_size,
            max_batch_size=end_batch_size,
            points=[(0.0, start_batch_size), (float(ramp_tokens), end_batch_size)],
            reference_batch_size=reference_batch_size or end_batch_size,
        )

    @classmethod
    def paper_111m(
        cls,
        *,
        micro_batch_size: int = 8,
        total_tokens: float = PAPER_111M_TOTAL_TOKENS,
        world_size: int = 1,
    ) -> BatchSizeSchedule:
        """The paper's preset: 16 -> 120 sequences (all ranks together) linearly in tokens over the run.

        Gray et al. (2024) trained a 111M GPT (2048-token sequences, micro-batch 8) with gradient
        accumulation ramped from 2 to 15 steps over the run, chosen from GNS measurements,
        against a fixed 120-sequence baseline (18% less training time for the same loss). Weight
        decay is referenced to the 120-sequence baseline. The batch sizes are the paper's global
        ones whatever ``micro_batch_size`` and ``world_size`` are (with ``micro_batch_size=4,
        world_size=2`` the ramp is 2 -> 15 accumulation steps of 8 sequences, as in the paper).

        Raises:
            RecipeError: ``micro_batch_size * world_size`` does not divide 16 and 120 (use 1, 2,
                4 or 8 sequences per step of all ranks).

        Example:
            >>> s = BatchSizeSchedule.paper_111m()
            >>> s.batch_size, s.max_batch_size
            (16, 120)
        """
        return cls.token_ramp(
            micro_batch_size=micro_batch_size,
            start_batch_size=16,  # sequences per optimizer step, global (was 2 * micro_batch_size:
            end_batch_size=120,  # 8 -> 60 with micro_batch_size=4, not the paper's ramp)
            ramp_tokens=total_tokens,
            world_size=world_size,
        )

    @classmethod
    def online(
        cls,
        *,
        micro_batch_size: int,
        min_batch_size: int,
        max_batch_size: int,
        fraction: float = 1.0,
        warmup_steps: int = 10,
        world_size: int = 1,
        reference_batch_size: int | None = None,
    ) -> BatchSizeSchedule:
        """Batch size = the smallest allowed batch >= ``fraction * B_simple`` (smoothed), never decreasing.

        Args:
            micro_batch_size: examples per micro-batch per rank.
            min_batch_size: start and floor.
            max_batch_size: ceiling.
            fraction: target batch as a fraction of the smoothed noise scale ``B_simple``.
            warmup_steps: good monitor updates to wait for before acting (early EMAs are noisy).
            world_size: data-parallel ranks.
            reference_batch_size: batch at which the weight decay was tuned (default
                ``min_batch_size``).

        Example:
            >>> s = BatchSizeSchedule.online(micro_batch_size=4, min_batch_size=8, max_batch_size=64, warmup_steps=0)
            >>> s.step(tokens=1000, estimate=30.0)
            32
            >>> s.step(tokens=1000, estimate=5.0)  # monotone: never shrinks
            32
        """
        return cls(
            kind="online",
            micro_batch_size=micro_batch_size,
            world_size=world_size,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            fraction=fraction,
            warmup_steps=warmup_steps,
            reference_batch_size=reference_batch_size,
        )

    # ---- state ---------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Examples per optimizer step (all ranks)."""
        return self._batch

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step on each rank."""
        return self._batch // (self.micro_batch_size * self.world_size)

    @property
    def weight_decay_scale(self) -> float:
        """``batch_size / reference_batch_size``: the factor on the base weight decay."""
        return self._batch / self.reference_batch_size

    def weight_decay(self, base: float) -> float:
        """Weight decay for the current batch size, holding the AdamW timescale (``lambda ∝ B``)."""
        return base * self.weight_decay_scale

    def _quantize_up(self, b: float) -> int:
        q = self.micro_batch_size * self.world_size
        b = min(max(b, self.min_batch_size), self.max_batch_size)
        return int(min(self.max_batch_size, math.ceil(b / q - 1e-9) * q))

    def _ramp_batch(self, tokens: float) -> int:
        ts = [t for t, _ in self.points]
        bs = [b for _, b in self.points]
        if tokens <= ts[0]:
            b = bs[0]
        elif tokens >= ts[-1]:
            b = bs[-1]
        else:
            j = next(i for i in range(1, len(ts)) if tokens < ts[i])
            f = (tokens - ts[j - 1]) / (ts[j] - ts[j - 1])
            b = bs[j - 1] + f * (bs[j] - bs[j - 1])
        return self._quantize_up(b)

    def step(self, tokens: int | float = 0, estimate: Any = None) -> int:
        """Advance by one optimizer step; returns the batch size for the next step.

        Args:
            tokens: tokens consumed by the step just taken (for the ramp; counted always).
            estimate: online mode: a :class:`~fxparam.gns.GNSEstimate` (its smoothed total
                ``b_simple`` is used once ``good_steps >= warmup_steps``) or a float
                ``B_simple``. Non-finite or non-positive values are ignored.
        """
        if tokens < 0:
            raise RecipeError(f"BatchSizeSchedule.step: tokens must be >= 0, got {tokens}")
        self.tokens_seen += tokens
        self.steps += 1
        if self.kind == "ramp":
            new = self._ramp_batch(self.tokens_seen)
        else:
            new = self._batch
            b_simple = None
            ready = False
            if isinstance(estimate, (int, float)):
                b_simple = float(estimate)
                ready = self.steps >= self.warmup_steps
            elif estimate is not None:
                b_simple = float(estimate.total.b_simple)
                ready = estimate.good_steps >= self.warmup_steps
            if b_simple is not None and ready and math.isfinite(b_simple) and b_simple > 0:
                new = self._quantize_up(self.fraction * b_simple)
        self._batch = max(self._batch, new)  # monotone
        return self._batch

    def apply_weight_decay(self, optimizer: torch.optim.Optimizer) -> None:
        """Set every param group's ``weight_decay`` to its base value times :attr:`weight_decay_scale`.

        The base values are the groups' ``weight_decay`` at the first call (groups without decay
        stay at 0). Call before each ``optimizer.step()``.
        """
        if self._base_wd is None:
            self._base_wd = {
                i: float(g.get("weight_decay", 0.0)) for i, g in enumerate(optimizer.param_groups)
            }
        for i, g in enumerate(optimizer.param_groups):
            if i not in self._base_wd:
                raise RecipeError(
                    f"BatchSizeSchedule.apply_weight_decay: optimizer has {len(optimizer.param_groups)} param groups "
                    f"but {len(self._base_wd)} were recorded at the first call; use one schedule per optimizer"
                )
            if "weight_decay" in g:
                g["weight_decay"] = self._base_wd[i] * self.weight_decay_scale

    def state_dict(self) -> dict[str, Any]:
        """Counters and current batch size, for checkpoints."""
        return {
            "tokens_seen": self.tokens_seen,
            "steps": self.steps,
            "batch": self._batch,
            "base_wd": self._base_wd,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.tokens_seen = state["tokens_seen"]
        self.steps = int(state["steps"])
        self._batch = int(state["batch"])
        bw = state.get("base_wd")
        self._base_wd = {int(k): float(v) for k, v in bw.items()} if bw is not None else None

    def __repr__(self) -> str:
        return (
            f"BatchSizeSchedule(kind={self.kind!r}, batch_size={self._batch}, accumulation_steps="
            f"{self.accumulation_steps}, bounds=[{self.min_batch_size}, {self.max_batch_size}], "
            f"tokens_seen={self.tokens_seen})"
        )


__all__ = ["BatchSizeSchedule", "PAPER_111M_TOTAL_TOKENS"]
