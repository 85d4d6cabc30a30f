"""The gradient-noise-scale monitor: per-example norm-layer gradient norms -> |G|^2, tr(Sigma), B_simple.

Usage (a plain training loop; ``K`` micro-batches per optimizer step)::

    fxparam.gns.swap_norms(model)            # or fxparam.transform(model, "gns")
    monitor = fxparam.gns.monitor(model)
    for step in range(steps):
        for micro in range(K):
            loss = model(x[micro], y[micro])[1] / K   # mean over the micro-batch, / K
            loss.backward()
        monitor.update()                     # after all backwards, before clipping / step / zero_grad
        optimizer.step(); optimizer.zero_grad()
        log(monitor.as_dict())

Conventions (``loss_reduction``):

- ``"mean"`` (default): the loss of a step is the *mean over its examples* of each example's own
  loss (e.g. token-mean cross-entropy with equal-length sequences, divided by ``K`` when
  accumulating equal micro-batches; under DDP, the mean over the rank's examples, DDP then
  averages gradients across ranks). The norm backward then sees ``dy`` carrying ``1/n`` (``n``
  = examples on this rank in this step), so the kernels' per-example gradients are ``G_b / n``;
  the monitor multiplies by ``n`` (known only at :meth:`GNSMonitor.update`, which is why
  the per-example norms are read there). ``G_b`` is the gradient of example ``b``'s own loss,
  and ``param.grad`` is ``G_bar``. With ragged sequences (padding labels ``-100``) and a *global*
  token mean (Hugging Face's default causal-LM loss), example ``b``'s loss is
  ``(n / total_tokens) * sum_t loss_bt``, i.e. examples weighted by their token counts, not each
  sequence's own token mean (review R15: tr(Sigma) differed by 26% from the per-sequence-mean
  truth on a small Llama); average per sequence first if that is the example loss wanted.
- ``"sum"``: the loss is the sum of per-example losses; per-example gradients are used as they
  are and ``G_bar = param.grad * world_size / B``.

B_simple is the same under both conventions (it is a ratio); ``|G|^2`` and ``tr(Sigma)`` are in
the units of ``G_b``.

Mixed precision: with a ``GradScaler``, call ``scaler.unscale_(optimizer)`` first and pass
``update(loss_scale=scaler.get_scale())``: the per-example norms still carry the scale.
A step whose estimates are not finite (an fp16 overflow, a NaN loss) is skipped: the EMAs are
not touched and ``bad_steps`` is incremented.

Which examples: each norm's example dimension is found from the model at the first training
forward (the model-input dim that no attention, matmul or softmax mixes; see
``fxparam.gns._batch_dim``), e.g. dim 1 of a ``(sequence, batch, hidden)`` activation, or the
example chunks of flattened ``(batch * sequence, hidden)`` tokens; ``batch_dim=`` overrides it.
A norm module used several times per forward (a block shared across depth) reports, per
example, the squared norm of its gradient *summed over the uses* (the per-example gradient of
the shared parameter) and counts each example once.

Distributed: when ``torch.distributed`` is initialised with more than one rank, ``update()``
all-reduces (sums) one small vector per step: each tracked parameter's ``sum_b |G_b|^2`` and
each module's example count, so ``S_small`` covers the global batch. ``S_big`` comes from
``param.grad``, which DDP has already averaged. Every rank gets the same estimate.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from fxparam.errors import GNSError
from fxparam.gns._estimators import EMA, ratio, unbiased_estimates
from fxparam.kernels.norms import PerExampleNormMixin

_NO_NORMS = (
    "fxparam.gns.monitor: {model} has no per-example norm modules to track; call "
    "fxparam.transform(model, 'gns') or fxparam.gns.swap_norms(model) first"
)


_TOTAL = "\0total"  # EMA key of the total (cannot collide with a module FQN)


class ScalarWriter(Protocol):
    """Anything with TensorBoard's ``add_scalar(tag, value, global_step)``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...


class GNSStats(BaseModel):
    """Gradient-noise-scale estimates for one layer or for the total.

    Attributes:
        g2: EMA-smoothed (bias-corrected) unbiased estimate of ``|G|^2``.
        trace_sigma: EMA-smoothed unbiased estimate of ``tr(Sigma)`` (per-example covariance).
        b_simple: ``trace_sigma / g2``: the smoothed simple noise scale, in examples.
        g2_raw: this step's unbiased ``|G|^2`` estimate (may be negative: it is unbiased).
        trace_sigma_raw: this step's unbiased ``tr(Sigma)`` estimate.
        b_simple_raw: ratio of this step's raw estimates.
        s_small: this step's mean per-example squared gradient norm.
        s_big: this step's squared norm of the mean gradient.
        batch_size: examples in this step (global under DDP).
    """

    model_config = ConfigDict(frozen=True)

    g2: float
    trace_sigma: float
    b_simple: float
    g2_raw: float
    trace_sigma_raw: float
    b_simple_raw: float
    s_small: float
    s_big: float
    batch_size: int


class GNSEstimate(BaseModel):
    """The monitor's state after an update: total and per-layer estimates.

    Attributes:
        step: number of :meth:`GNSMonitor.update` calls so far (good and bad).
        good_steps: updates that entered the EMAs.
        bad_steps: updates skipped because an estimate was not finite.
        last_step_ok: whether the latest update entered the EMAs.
        total: estimates over all tracked parameters (sums of the per-layer ones).
        layers: per norm module FQN (weight and bias together).
    """

    model_config = ConfigDict(frozen=True)

    step: int
    good_steps: int
    bad_steps: int
    last_step_ok: bool
    total: GNSStats
    layers: dict[str, GNSStats] = Field(default_factory=dict)

    def as_dict(self, prefix: str = "gns", layers: bool = True) -> dict[str, float]:
        """Flat ``{tag: float}`` for loggers: ``{prefix}/{field}`` and ``{prefix}/{layer}/{field}``.

        Example:
            >>> s = GNSStats(g2=1.0, trace_sigma=4.0, b_simple=4.0, g2_raw=1.0, trace_sigma_raw=4.0,
            ...              b_simple_raw=4.0, s_small=5.0, s_big=2.0, batch_size=4)
            >>> e = GNSEstimate(step=1, good_steps=1, bad_steps=0, last_step_ok=True, total=s)
            >>> e.as_dict()["gns/b_simple"]
            4.0
        """
        out: dict[str, float] = {
            f"{prefix}/step": float(self.step),
            f"{prefix}/bad_steps": float(self.bad_steps),
        }
        for k, v in self.total.model_dump().items():
            out[f"{prefix}/{k}"] = float(v)
        if layers:
            for name, st in self.layers.items():
                for k in ("g2", "trace_sigma", "b_simple"):
                    out[f"{prefix}/{name}/{k}"] = float(getattr(st, k))
        return out


class _Tracked:
    __slots__ = ("fqn", "module", "params")

    def __init__(self, fqn: str, module: PerExampleNormMixin, params: list[tuple[str, str, nn.Parameter]]):
        self.fqn = fqn
        self.module = module
        self.params = params  # (local name, parameter FQN, parameter)


def _unwrap(model: nn.Module) -> nn.Module:
    """DDP / torch.compile wrappers: report FQNs of the user's model (the one ``unwrap``, in fxparam.plan)."""
    from fxparam.plan import unwrap

    return unwrap(model)


class GNSMonitor:
    """Tracks the gradient noise scale from per-example norm-layer gradient norms.

    Create with :func:`monitor`. See the module docstring for the training-loop contract and the
    scaling conventions.

    Args:
        model: a model whose norm layers were swapped (``fxparam.gns.swap_norms``); may be
            wrapped in DDP.
        alpha: EMA decay of the smoothed ``|G|^2`` and ``tr(Sigma)`` (reference default 0.99).
        loss_reduction: ``"mean"`` or ``"sum"``: how the loss combines examples.
        process_group: group to all-reduce over (default: the world, when initialised).
        tensorboard_writer: optional writer; :meth:`update` logs the totals to it.
        log_layers: also log per-layer values to the writer.
        keep_per_example: keep per-example vectors for :meth:`per_example_sq_norms` (cheap:
            ``B`` floats per parameter per step).
        batch_dim: which dim of each norm's input indexes examples, overriding what is found
            from the model (an int for every norm, or ``{norm FQN: dim}``); see
            :func:`fxparam.gns.swap_norms`.

    Raises:
        GNSError: a bad ``loss_reduction`` / ``alpha`` / ``batch_dim``, or no per-example norms.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float = 0.99,
        loss_reduction: Literal["mean", "sum"] = "mean",
        process_group: Any = None,
        tensorboard_writer: ScalarWriter | None = None,
        log_layers: bool = False,
        keep_per_example: bool = True,
        batch_dim: int | dict[str, int] | None = None,
    ) -> None:
        if loss_reduction not in ("mean", "sum"):
            raise GNSError(
                f"fxparam.gns.monitor: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}"
            )
        if not 0.0 <= alpha < 1.0:
            raise GNSError(f"fxparam.gns.monitor: alpha must be in [0, 1), got {alpha}")
        inner = _unwrap(model)
        names: dict[int, str] = {}
        for pname, p in inner.named_parameters():
            names.setdefault(id(p), pname)
        self._tracked: list[_Tracked] = []
        for fqn, m in inner.named_modules():
            if not isinstance(m, PerExampleNormMixin):
                continue
            params = [
                (local, names.get(id(p), f"{fqn}.{local}" if fqn else local), p)
                for local, p in m.tracked_parameters().items()
                if p.requires_grad
            ]
            if params:
                m.gns_accumulator.keep_per_example = keep_per_example
                self._tracked.append(_Tracked(fqn, m, params))
        if not self._tracked:
            raise GNSError(_NO_NORMS.format(model=type(inner).__name__))
        from fxparam.gns._batch_dim import attach_root

        attach_root(inner, batch_dim)
        self.alpha = float(alpha)
        self.loss_reduction = loss_reduction
        self.process_group = process_group
        self.tensorboard_writer = tensorboard_writer
        self.log_layers = log_layers
        self._ema: dict[str, tuple[EMA, EMA]] = {}
        self._step = 0
        self._good = 0
        self._bad = 0
        self._last: GNSEstimate | None = None
        self._warned_counts = False

    # ----------------------------------------------------------------------------------------

    @property
    def tracked_modules(self) -> list[str]:
        """FQNs of the norm modules tracked (layers)."""
        return [t.fqn for t in self._tracked]

    @property
    def tracked_parameters(self) -> list[str]:
        """FQNs of the parameters tracked."""
        return [pf for t in self._tracked for _, pf, _ in t.params]

    @property
    def bad_steps(self) -> int:
        """Updates skipped because an estimate was not finite."""
        return self._bad

    def reset(self) -> None:
        """Discard the per-example norms accumulated since the last update (EMAs are kept)."""
        for t in self._tracked:
            t.module.gns_accumulator.reset()

    def _world(self) -> int:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(self.process_group)
        return 1

    def per_example_sq_norms(self, loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Each example's squared gradient norm per tracked parameter, since the last update.

        Returns ``{parameter FQN: fp32 tensor[n]}`` over the ``n`` examples this rank saw since
        the last :meth:`update` (all micro-batches, in order), scaled as ``|G_b|^2`` with ``G_b``
        the gradient of example ``b``'s own loss (see the module docstring; under ``"mean"`` the
        scale uses this rank's ``n``, so call it after the step's last backward).

        Example:
            >>> from fxparam.models.gpt import GPT, GPTConfig
            >>> from fxparam.gns import swap_norms
            >>> model = GPT(GPTConfig(width=32, depth=1, head_dim=16)); _ = swap_norms(model)
            >>> mon = monitor(model)
            >>> idx = torch.randint(0, 256, (3, 8))
            >>> model(idx, idx)[1].backward()
            >>> mon.per_example_sq_norms()["ln_f.weight"].shape
            torch.Size([3])
        """
        out: dict[str, torch.Tensor] = {}
        for t in self._tracked:
            acc = t.module.gns_accumulator
            scale = (acc.count if self.loss_reduction == "mean" else 1.0) / loss_scale
            for local, pfqn, _ in t.params:
                vecs = acc.per_example.get(local)
                if vecs:
                    out[pfqn] = torch.cat(vecs) * (scale * scale)
        return out

    def update(self, *, loss_scale: float = 1.0, step: int | None = None) -> GNSEstimate:
        """Fold this step's per-example and full-batch norms into the estimates; reset the buffers.

        Call after the step's last ``backward()`` (all micro-batches) and before gradient
        clipping, ``optimizer.step()`` and ``zero_grad()``. Under DDP every rank must call it
        (it all-reduces).

        Args:
            loss_scale: factor the per-example norms still carry (a ``GradScaler``'s scale,
                after ``scaler.unscale_(optimizer)``).
            step: global step for the TensorBoard writer (default: the update count).

        Returns:
            The new :class:`GNSEstimate` (also available from :meth:`estimate`).

        Raises:
            GNSError: no backward since the last update, a tracked parameter without ``.grad``,
                or fewer than 2 examples in the step.
        """
        dev = self._tracked[0].params[0][2].device
        small_terms: list[torch.Tensor] = []
        counts: list[float] = []
        big_terms: list[torch.Tensor] = []
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        for t in self._tracked:
            acc = t.module.gns_accumulator
            n = acc.count
            counts.append(float(n))
            factor = float(n) ** 2 if self.loss_reduction == "mean" else 1.0
            for local, pfqn, p in t.params:
                s = acc.sums.get(local)
                small_terms.append(s.to(dev, torch.float64) * factor if s is not None else zero)
                if n > 0 and p.grad is None:
                    raise GNSError(
                        f"fxparam.gns.monitor.update: {pfqn} has no .grad but its per-example norms were recorded; "
                        "call update() after backward() and before optimizer.zero_grad()"
                    )
                g = p.grad
                big_terms.append(
                    g.detach().to(torch.float64).pow(2).sum() if g is not None and n > 0 else zero
                )
        n_small = len(small_terms)
        vec = torch.cat(
            [
                torch.stack(small_terms),
                torch.tensor(counts, dtype=torch.float64, device=dev),
                torch.stack(big_terms),
            ]
        )
        world = self._world()
        if world > 1:
            # CPU tensors for gloo; the device otherwise (nccl needs CUDA tensors).
            backend = dist.get_backend(self.process_group)
            buf = vec.cpu() if backend == "gloo" else vec
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.process_group)
            vec = buf
        vals = vec.cpu().tolist()  # the only host sync of the step
        sum_g2 = vals[:n_small]
        counts = vals[n_small : n_small + len(self._tracked)]
        grad_sq = [v / world for v in vals[n_small + len(self._tracked) :]]  # DDP grads agree on every rank
        self.reset()
        if all(c == 0 for c in counts):
            raise GNSError(
                "fxparam.gns.monitor.update: no per-example norms since the last update; call it once per "
                "optimizer step, after the backward pass(es)"
            )
        inv_ls2 = 1.0 / (float(loss_scale) ** 2)
        layers: dict[str, tuple[float, float, float, float, int]] = {}
        i = 0
        seen_counts = set()
        for t, c in zip(self._tracked, counts, strict=True):
            k = len(t.params)
            if c == 0:
                i += k
                continue
            B = int(round(c))
            seen_counts.add(B)
            if B < 2:
                raise GNSError(
                    f"fxparam.gns.monitor.update: {t.fqn} saw {B} example in this step; the per-example GNS "
                    "needs at least 2 examples per optimizer step (all ranks and micro-batches together)"
                )
            s_small = sum(sum_g2[i : i + k]) / B * inv_ls2
            big = sum(grad_sq[i : i + k])  # param.grad is already unscaled
            if self.loss_reduction == "sum":
                big *= (world / B) ** 2
            g2, tr = unbiased_estimates(s_small, big, B)
            layers[t.fqn] = (g2, tr, s_small, big, B)
            i += k
        if len(seen_counts) > 1 and not self._warned_counts:
            self._warned_counts = True
            warnings.warn(
                f"fxparam.gns.monitor: tracked norm modules saw different numbers of examples {sorted(seen_counts)} "
                "in one step (a module skipped in some forwards, or an example dim that is not the batch: see "
                "batch_dim=); per-layer estimates use each module's own count",
                stacklevel=2,
            )
        tot = [sum(v[j] for v in layers.values()) for j in range(4)]
        total_B = max(v[4] for v in layers.values())
        ok = all(math.isfinite(x) for x in tot)
        self._step += 1
        if ok:
            self._good += 1
            for name, (g2, tr, *_rest) in [*layers.items(), (_TOTAL, (tot[0], tot[1]))]:
                e = self._ema.setdefault(name, (EMA(self.alpha), EMA(self.alpha)))
                e[0].update(g2)
                e[1].update(tr)
        else:
            self._bad += 1

        def stats(name: str, g2: float, tr: float, s_small: float, s_big: float, B: int) -> GNSStats:
            e = self._ema.get(name)
            sg2 = e[0].value if e else math.nan
            str_ = e[1].value if e else math.nan
            return GNSStats(
                g2=sg2,
                trace_sigma=str_,
                b_simple=ratio(str_, sg2),
                g2_raw=g2,
                trace_sigma_raw=tr,
                b_simple_raw=ratio(tr, g2),
                s_small=s_small,
                s_big=s_big,
                batch_size=B,
            )

        est = GNSEstimate(
            step=self._step,
            good_steps=self._good,
            bad_steps=self._bad,
            last_step_ok=ok,
            total=stats(_TOTAL, tot[0], tot[1], tot[2], tot[3], total_B),
            layers={name: stats(name, *v) for name, v in layers.items()},
        )
        self._last = est
        if self.tensorboard_writer is not None:
            gstep = step if step is not None else self._step
            for tag, val in est.as_dict(layers=self.log_layers).items():
                self.tensorboard_writer.add_scalar(tag, val, gstep)
        return est

    def estimate(self) -> GNSEstimate:
        """The estimate after the latest :meth:`update`.

        Raises:
            GNSError: before the first update.
        """
        if self._last is None:
            raise GNSError(
                "fxparam.gns.monitor.estimate: no update yet; call monitor.update() after a backward pass"
            )
        return self._last

    def as_dict(self, prefix: str = "gns", layers: bool = True) -> dict[str, float]:
        """``estimate().as_dict(...)``, or ``{}`` before the first update (handy in logging code)."""
        return self._last.as_dict(prefix, layers) if self._last is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """EMA state and counters, for checkpoints."""
        return {
            "alpha": self.alpha,
            "step": self._step,
            "good": self._good,
            "bad": self._bad,
            "ema": {k: (a.state_dict(), b.state_dict()) for k, (a, b) in self._ema.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.alpha = float(state["alpha"])
        self._step, self._good, self._bad = int(state["step"]), int(state["good"]), int(state["bad"])
        self._ema = {}
        for k, (a, b) in state["ema"].items():
            ea, eb = EMA(self.alpha), EMA(self.alpha)
            ea.load_state_dict(a)
            eb.load_state_dict(b)
            self._ema[k] = (ea, eb)


def monitor(model: nn.Module, **kwargs: Any) -> GNSMonitor:
    """Start tracking the gradient noise scale of a model whose norms report per-example norms.

    Args:
        model: the model (after ``fxparam.transform(model, "gns")`` or
            ``fxparam.gns.swap_norms(model)``), possibly DDP-wrapped.
        **kwargs: :class:`GNSMonitor` options (``alpha``, ``loss_reduction``,
            ``process_group``, ``tensorboard_writer``, ``log_layers``, ``keep_per_example``,
            ``batch_dim``).

    Returns:
        A :class:`GNSMonitor`.

    Raises:
        GNSError: the model has no per-example norm modules.

    Example:
        >>> from fxparam.models.gpt import GPT, GPTConfig
        >>> from fxparam.gns import swap_norms
        >>> model = GPT(GPTConfig(width=32, depth=1, head_dim=16)); _ = swap_norms(model)
        >>> mon = monitor(model)
        >>> idx = torch.randint(0, 256, (4, 8))
        >>> model(idx, idx)[1].backward()
        >>> est = mon.update()
        >>> est.total.batch_size, sorted(est.layers)
        (4, ['blocks.0.ln_1', 'blocks.0.ln_2', 'ln_f'])
    """
    return GNSMonitor(model, **kwargs)


__all__ = ["GNSEstimate", "GNSMonitor", "GNSStats", "ScalarWriter", "monitor"]
