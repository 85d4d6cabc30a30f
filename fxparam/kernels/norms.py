"""Per-example-gradient-norm LayerNorm / RMSNorm: autograd Functions, functionals and modules.

Layering (Liger-Kernel style): Triton programs and host launchers in
:mod:`fxparam.kernels._norm_triton`; the pure-PyTorch spec / CPU path in
:mod:`fxparam.kernels.reference`; here the Triton autograd Functions, the functional wrappers
that pick a backend, and the ``nn.Module`` s.

Backends: ``"auto"`` runs Triton on CUDA tensors and the PyTorch path elsewhere;
``"triton"`` forces Triton (on CPU only under ``TRITON_INTERPRET=1``, for tests);
``"reference"`` forces the PyTorch path.

Modules. :class:`PerExampleLayerNorm` and :class:`PerExampleRMSNorm` subclass
``nn.LayerNorm`` / ``nn.RMSNorm``: same constructor, same parameters (``weight``, ``bias``),
same ``state_dict`` keys, bitwise the same forward on the PyTorch path. Their backward also
adds each example's squared weight/bias gradient norm to :attr:`gns_accumulator`, which
:func:`fxparam.gns.monitor` reads. :func:`per_example_class` builds the same for other norm
classes (HF ``LlamaRMSNorm`` and the like) by subclassing them; ``fxparam.gns.swap_norms``
swaps a module's class in place.
"""

from __future__ import annotations

import copy
import functools
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn

from fxparam.errors import GNSError, KernelError
from fxparam.kernels import _norm_triton
from fxparam.kernels.reference import (
    LayerNormPerExampleRef,
    RMSNormPerExampleRef,
    SqNormSink,
    _check_hidden,
    as_examples,
    default_rms_eps,
    layer_norm_stats,
    reduce_per_example,
    rms_norm_stats,
    sink_gradient,
)

Backend = Literal["auto", "triton", "reference"]
NormKind = Literal["layernorm", "rmsnorm"]
_BACKENDS = ("auto", "triton", "reference")


# --------------------------------------------------------------------------------------------
# Triton autograd Functions.
# --------------------------------------------------------------------------------------------


class _LayerNormTritonFn(torch.autograd.Function):
    """``apply(x, weight, bias, eps, sink, forward_fn, block_n, grad_sink) -> (y, mean, rstd)`` (``setup_context`` form)."""

    @staticmethod
    def forward(x, weight, bias, eps, sink=None, forward_fn=None, block_n=None, grad_sink=None):  # type: ignore[override]
        _check_hidden(x, weight, bias)
        x3 = as_examples(x)
        if forward_fn is None:
            y3, mean, rstd = _norm_triton.norm_fwd_triton(x3, weight, bias, eps, rms=False, block_n=block_n)
            return y3.view(x.shape), mean, rstd
        mean, rstd = (s.squeeze(-1) for s in layer_norm_stats(x3, eps))
        return forward_fn(x), mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, weight, bias, _eps, sink, _forward_fn, block_n, grad_sink = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.sink, ctx.has_bias, ctx.block_n = sink, bias is not None, block_n
        ctx.sink_shape = tuple(grad_sink.shape) if grad_sink is not None else None

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        x3 = as_examples(x)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        need_sink = ctx.needs_input_grad[7]
        need_dw = (need_dw or need_sink) and weight is not None
        need_db = (need_db or need_sink) and ctx.has_bias
        dx, dw_pe, db_pe = _norm_triton.norm_bwd_triton(
            dy.reshape(x3.shape),
            x3,
            weight,
            mean,
            rstd,
            need_dweight=need_dw,
            need_dbias=need_db,
            block_n=ctx.block_n,
        )
        wdtype = weight.dtype if weight is not None else torch.float32
        dweight, sq_w = reduce_per_example(dw_pe, wdtype)
        dbias, sq_b = reduce_per_example(db_pe, wdtype)
        if ctx.sink is not None and (sq_w is not None or sq_b is not None):
            ctx.sink(sq_w, sq_b)
        dsink = sink_gradient(ctx.sink_shape, dw_pe, db_pe) if need_sink else None
        needs = ctx.needs_input_grad
        return (
            dx.view(x.shape) if need_dx else None,
            dweight if needs[1] else None,
            dbias if needs[2] else None,
            None,
            None,
            None,
            None,
            dsink,
        )


class _RMSNormTritonFn(torch.autograd.Function):
    """``apply(x, weight, eps, sink, forward_fn, block_n, grad_sink) -> (y, rstd)`` (``setup_context`` form)."""

    @staticmethod
    def forward(x, weight, eps, sink=None, forward_fn=None, block_n=None, grad_sink=None):  # type: ignore[override]
        _check_hidden(x, weight, None)
        x3 = as_examples(x)
        eps_v = eps if eps is not None else default_rms_eps(x.dtype)
        if forward_fn is None:
            y3, _, rstd = _norm_triton.norm_fwd_triton(x3, weight, None, eps_v, rms=True, block_n=block_n)
            return y3.view(x.shape), rstd
        return forward_fn(x), rms_norm_stats(x3, eps_v).squeeze(-1)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, weight, _eps, sink, _forward_fn, block_n, grad_sink = inputs
        _y, rstd = output
        ctx.mark_non_differentiable(rstd)
        ctx.save_for_backward(x, weight, rstd)
        ctx.sink, ctx.block_n = sink, block_n
        ctx.sink_shape = tuple(grad_sink.shape) if grad_sink is not None else None

    @staticmethod
    def backward(ctx, dy, _drstd):  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        x3 = as_examples(x)
        need_dx, need_dw = ctx.needs_input_grad[:2]
        need_sink = ctx.needs_input_grad[6]
        need_dw = (need_dw or need_sink) and weight is not None
        dx, dw_pe, _ = _norm_triton.norm_bwd_triton(
            dy.reshape(x3.shape),
            x3,
            weight,
            None,
            rstd,
            need_dweight=need_dw,
            need_dbias=False,
            block_n=ctx.block_n,
        )
        dweight, sq_w = reduce_per_example(dw_pe, weight.dtype if weight is not None else None)
        if ctx.sink is not None and sq_w is not None:
            ctx.sink(sq_w, None)
        dsink = sink_gradient(ctx.sink_shape, dw_pe, None) if need_sink else None
        return (
            dx.view(x.shape) if need_dx else None,
            dweight if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
            dsink,
        )


class LayerNormPerExampleTriton:
    """LayerNorm on the Triton kernels; same contract as :class:`~fxparam.kernels.reference.LayerNormPerExampleRef`.

    ``apply(x, weight, bias, eps, sink=None, forward_fn=None, block_n=None, grad_sink=None) -> y``.

    Example:
        >>> x = torch.randn(2, 8, 64, device="cuda", requires_grad=True)  # doctest: +SKIP
        >>> w, b = torch.ones(64, device="cuda", requires_grad=True), None  # doctest: +SKIP
        >>> LayerNormPerExampleTriton.apply(x, w, b, 1e-5, print).sum().backward()  # doctest: +SKIP
    """

    @staticmethod
    def apply(x, weight, bias, eps, sink=None, forward_fn=None, block_n=None, grad_sink=None):  # type: ignore[no-untyped-def]
        return _LayerNormTritonFn.apply(x, weight, bias, eps, sink, forward_fn, block_n, grad_sink)[0]


class RMSNormPerExampleTriton:
    """RMSNorm on the Triton kernels; same contract as :class:`~fxparam.kernels.reference.RMSNormPerExampleRef`.

    ``apply(x, weight, eps, sink=None, forward_fn=None, block_n=None, grad_sink=None) -> y``.

    Example:
        >>> x = torch.randn(2, 8, 64, device="cuda", requires_grad=True)  # doctest: +SKIP
        >>> w = torch.ones(64, device="cuda", requires_grad=True)  # doctest: +SKIP
        >>> RMSNormPerExampleTriton.apply(x, w, 1e-6, print).sum().backward()  # doctest: +SKIP
    """

    @staticmethod
    def apply(x, weight, eps, sink=None, forward_fn=None, block_n=None, grad_sink=None):  # type: ignore[no-untyped-def]
        return _RMSNormTritonFn.apply(x, weight, eps, sink, forward_fn, block_n, grad_sink)[0]


# --------------------------------------------------------------------------------------------
# Functional wrappers.
# --------------------------------------------------------------------------------------------


def _use_triton(x: torch.Tensor, backend: str) -> bool:
    if backend not in _BACKENDS:
        raise KernelError(f"norm: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "reference":
        return False
    if backend == "triton":
        if not _norm_triton.triton_usable(x.device):
            raise KernelError(
                f"norm: backend='triton' cannot run on {x.device} tensors "
                f"(triton installed: {_norm_triton.HAS_TRITON}); use CUDA tensors, set TRITON_INTERPRET=1 "
                "before importing fxparam to run the interpreter on CPU, or use backend='reference'"
            )
        return True
    return x.device.type == "cuda" and _norm_triton.HAS_TRITON


def _cuda_autocast(x: torch.Tensor) -> bool:
    # torch's CUDA autocast runs layer_norm and rms_norm in fp32 (they have AutocastCUDA fp32
    # kernels); mirror it so swapping a module never changes output dtypes under autocast.
    return x.device.type == "cuda" and torch.is_autocast_enabled("cuda")


def layer_norm_per_example(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    sink: SqNormSink | None = None,
    backend: Backend = "auto",
    forward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    block_n: int | None = None,
    grad_sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """LayerNorm over the last dim whose backward reports per-example gradient norms.

    Args:
        x: ``(batch, ..., hidden)`` input; example = leading index.
        weight: ``(hidden,)`` gain or None.
        bias: ``(hidden,)`` bias or None.
        eps: variance epsilon.
        sink: called in backward as ``sink(sq_weight, sq_bias)`` with fp32 ``(batch,)`` tensors
            ``|sum_t dy * x_hat|^2`` and ``|sum_t dy|^2`` per example (None for parameters
            without a gradient).
        backend: ``"auto"`` (Triton on CUDA, PyTorch elsewhere), ``"triton"`` or ``"reference"``.
        forward_fn: compute the output with this function instead (keeps a third-party class's
            exact forward); the backward is still the fused one.
        block_n: Triton column tile override (power of two), for tests.
        grad_sink: a leaf ``(batch, P, hidden)`` tensor (``P`` = number of ``weight``/``bias``
            given) that the output does not depend on; backward sets its gradient to the fp32
            per-example gradients ``[dweight_b, dbias_b]`` (summed by autograd over every call
            that shares the sink). The compile-friendly alternative to ``sink``.

    Returns:
        The normalised tensor, shaped like ``x``.

    Raises:
        KernelError: a bad backend, or weight/bias not 1-D of the hidden size.

    Example:
        >>> x = torch.randn(2, 4, 8, requires_grad=True)
        >>> w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
        >>> got = []
        >>> layer_norm_per_example(x, w, b, sink=lambda sw, sb: got.append(sw)).sum().backward()
        >>> got[0].shape
        torch.Size([2])
    """
    if forward_fn is None and _cuda_autocast(x):
        with torch.autocast("cuda", enabled=False):
            return layer_norm_per_example(
                x.float(),
                weight.float() if weight is not None else None,
                bias.float() if bias is not None else None,
                eps,
                sink=sink,
                backend=backend,
                block_n=block_n,
                grad_sink=grad_sink,
            )
    if _use_triton(x, backend):
        return LayerNormPerExampleTriton.apply(x, weight, bias, eps, sink, forward_fn, block_n, grad_sink)
    return LayerNormPerExampleRef.apply(x, weight, bias, eps, sink, forward_fn, grad_sink)


def rms_norm_per_example(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float | None = None,
    *,
    sink: SqNormSink | None = None,
    backend: Backend = "auto",
    forward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    block_n: int | None = None,
    grad_sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm over the last dim whose backward reports per-example gain-gradient norms.

    Arguments as :func:`layer_norm_per_example` (no bias); ``eps=None`` is torch's default
    (machine eps of the compute type). ``sink`` receives ``(sq_weight, None)``; ``grad_sink``
    is ``(batch, 1, hidden)``.

    Raises:
        KernelError: a bad backend, or weight not 1-D of the hidden size.

    Example:
        >>> x = torch.randn(3, 5, 8, requires_grad=True)
        >>> w = torch.ones(8, requires_grad=True)
        >>> torch.equal(rms_norm_per_example(x, w, 1e-6), torch.nn.functional.rms_norm(x, (8,), w, 1e-6))
        True
    """
    if forward_fn is None and _cuda_autocast(x):
        with torch.autocast("cuda", enabled=False):
            return rms_norm_per_example(
                x.float(),
                weight.float() if weight is not None else None,
                eps,
                sink=sink,
                backend=backend,
                block_n=block_n,
                grad_sink=grad_sink,
            )
    if _use_triton(x, backend):
        return RMSNormPerExampleTriton.apply(x, weight, eps, sink, forward_fn, block_n, grad_sink)
    return RMSNormPerExampleRef.apply(x, weight, eps, sink, forward_fn, grad_sink)


# --------------------------------------------------------------------------------------------
# Where per-example norms go: a small accumulator per module.
# --------------------------------------------------------------------------------------------


class SqNormAccumulator:
    """Per-example squared gradient norms a norm module's backward reported since the last reset.

    Kept per parameter (``"weight"``, ``"bias"``): the running sum ``sum_b |raw_b|^2`` as a
    device scalar (no host sync in backward) and the number of examples seen, the reference's
    ``[sum, count]`` buffer, which stays right across gradient accumulation. ``raw_b`` is the
    per-example gradient of the loss that was back-propagated (see
    :mod:`fxparam.kernels.reference` for its scaling). With ``keep_per_example`` the ``(B,)``
    vectors are kept too (the GNS monitor turns it on; off by default so a model trained without
    a monitor keeps nothing).

    Attributes:
        sums: parameter name -> fp32 scalar tensor ``sum_b |raw_b|^2``.
        per_example: parameter name -> list of fp32 ``(B,)`` tensors, one per backward call.
        count: examples seen (sum of leading dims over backward calls).
        calls: backward calls seen.
        keep_per_example: whether to keep the per-example vectors.

    Example:
        >>> acc = SqNormAccumulator()
        >>> acc.add(torch.tensor([1.0, 2.0]), None)
        >>> acc.count, float(acc.sums["weight"])
        (2, 3.0)
    """

    def __init__(self, keep_per_example: bool = False) -> None:
        self.keep_per_example = keep_per_example
        self.reset()

    def reset(self) -> None:
        """Forget everything seen (called by the monitor after each step)."""
        self.sums: dict[str, torch.Tensor] = {}
        self.per_example: dict[str, list[torch.Tensor]] = {}
        self.count = 0
        self.calls = 0

    def add(self, sq_weight: torch.Tensor | None, sq_bias: torch.Tensor | None) -> None:
        """Record one backward call's fp32 ``(B,)`` squared norms (either may be None)."""
        first = sq_weight if sq_weight is not None else sq_bias
        if first is None:
            return
        self.count += int(first.shape[0])
        self.calls += 1
        for name, sq in (("weight", sq_weight), ("bias", sq_bias)):
            if sq is None:
                continue
            sq = sq.detach()
            s = sq.sum()
            prev = self.sums.get(name)
            self.sums[name] = s if prev is None else prev + s
            if self.keep_per_example:
                self.per_example.setdefault(name, []).append(sq)

    def __call__(self, sq_weight: torch.Tensor | None, sq_bias: torch.Tensor | None) -> None:
        self.add(sq_weight, sq_bias)

    def __repr__(self) -> str:
        return f"SqNormAccumulator(count={self.count}, calls={self.calls}, params={sorted(self.sums)})"


# --------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleLayout:
    """Which dimension of a norm module's input indexes examples.

    Attributes:
        dim: the input dimension that indexes examples (never the last, hidden, one).
        flat: the leading dimension is examples x positions flattened examples-major (a
            ``(B*T, H)`` input from ``x.view(-1, H)`` of a ``(B, T, H)`` activation); the number of
            examples then comes from the model input (:class:`GNSRoot`).
        source: ``"found"`` (traced from the model inputs), ``"override"`` (``batch_dim=``) or
            ``"default"`` (a module used on its own: the leading dim).

    Example:
        >>> ExampleLayout(dim=1, source="override")
        ExampleLayout(dim=1, flat=False, source='override')
    """

    dim: int = 0
    flat: bool = False
    source: str = "default"


class GNSRoot:
    """State shared by the per-example norms of one model (set by its forward pre-hook).

    Attributes:
        input_loc: where the example count is read from the model inputs: ``("arg", i, dim)``
            or ``("kwarg", name, dim)`` (``i`` / ``name`` a tuple of keys for a tensor inside a
            dict / list input); None when unknown.
        warned_paired: whether the paired-forwards warning was given (see
            :class:`PerExampleNormMixin`).
        n: examples in the current forward (from ``input_loc``), or None.
        forward_id: eager forwards seen (a norm allocates a fresh per-example sink per forward).
        found: whether example layouts have been looked for (once, at the first eager forward
            or :func:`fxparam.gns.prepare`).
        batch_dim: the user's override (``int`` or ``{norm FQN: int}``) or None.
        norms: norm FQN -> module, for error messages and layout assignment.
    """

    def __init__(self, batch_dim: int | dict[str, int] | None = None) -> None:
        self.input_loc: tuple[str, Any, int] | None = None
        self.n: int | None = None
        self.forward_id = 0
        self.found = False
        self.batch_dim = batch_dim
        self.norms: dict[str, nn.Module] = {}
        self.warned_paired = False  # a second forward before a backward shared the sinks (warned once)

    def __repr__(self) -> str:
        return (
            f"GNSRoot(input_loc={self.input_loc}, n={self.n}, found={self.found}, batch_dim={self.batch_dim})"
        )


class _GNSState:
    """Per norm module: its layout, root, accumulator and the current per-example gradient sink."""

    def __init__(self) -> None:
        self.fqn = ""
        self.layout: ExampleLayout | None = None
        self.root: GNSRoot | None = None
        self.acc = SqNormAccumulator()
        self.sink: torch.Tensor | None = None
        self.names: tuple[str, ...] = ()
        self.sink_forward: int | None = None
        self.pending = False
        self.contributed: set[int] = set()  # forward ids whose sink alias got a gradient this backward

    def __deepcopy__(self, memo: dict[int, Any]) -> _GNSState:
        # A copy (deepcopy / pickle of the model) starts without sinks: a sink's hook feeds the
        # accumulator of the module that created it.
        new = _GNSState()
        new.fqn, new.layout = self.fqn, self.layout
        new.root = copy.deepcopy(self.root, memo)
        new.acc.keep_per_example = self.acc.keep_per_example
        return new

    def __getstate__(self) -> dict[str, Any]:
        return {"fqn": self.fqn, "layout": self.layout, "root": self.root, "keep": self.acc.keep_per_example}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.fqn, self.layout, self.root = state["fqn"], state["layout"], state["root"]
        self.acc.keep_per_example = state["keep"]


def _mark_forward(state: _GNSState, fid: int, _grad: torch.Tensor) -> None:
    """Gradient hook of a forward's sink alias: that forward contributed to this backward."""
    state.contributed.add(fid)


def _consume_sink(state: _GNSState, sink: torch.Tensor) -> None:
    """Post-accumulate-grad hook of a sink: fold each example's squared norm into the accumulator."""
    g = sink.grad
    sink.grad = None
    state.pending = False
    paired, state.contributed = len(state.contributed) > 1, set()
    if paired and g is not None and state.root is not None and not getattr(state.root, "warned_paired", False):
        state.root.warned_paired = True  # getattr: roots pickled before the attribute existed
        warnings.warn(
            f"fxparam.gns: per-example norm {state.fqn!r} got gradients from several model forwards with the "
            f"same number of examples ({g.shape[0]}) in one backward: example i of each forward is taken to be "
            "one example (a pair, as in a contrastive or chosen/rejected loss) and its gradients are summed. If "
            "the forwards hold independent examples, call backward after each (gradient accumulation) or "
            "concatenate them into one batch",
            stacklevel=2,
        )
    if g is None:
        return
    sq = g.detach().float().pow(2).sum(-1)  # (B, P): |per-example gradient summed over uses|^2
    cols = dict(zip(state.names, sq.unbind(1), strict=True))
    state.acc.add(cols.get("weight"), cols.get("bias"))


def _functorch_active() -> bool:
    return torch._C._functorch.peek_interpreter_stack() is not None


class PerExampleNormMixin:
    """What every per-example norm module shares; ``isinstance(m, PerExampleNormMixin)`` finds them.

    Class attributes: ``norm_kind`` (``"layernorm"`` / ``"rmsnorm"``) and ``base_class`` (the
    norm class it extends, e.g. ``nn.LayerNorm``). Instance/class attribute ``backend``
    (``"auto"``) picks the kernel path.

    How per-example gradients leave the backward: each forward passes a *sink*, a zero leaf
    tensor of shape ``(n_examples, P, hidden)`` (``P`` = 1 for a gain, 2 with a bias) that the
    output does not depend on, and the backward sets its gradient to the per-example gradients
    ``[dweight_b, dbias_b]``. Autograd sums that gradient over every use of the module in the
    forward (a norm shared across depth), so a post-accumulate-grad hook on the sink squares
    each example's *summed* gradient, the per-example gradient of the shared parameter, and
    adds it to :attr:`gns_accumulator`. Under ``torch.compile`` the sink is an ordinary graph
    input (no Python state is touched in the compiled backward); it must exist before the first
    compiled call (:func:`fxparam.gns.prepare`, or any eager forward, allocates it). Forwards of
    the same batch size before one backward share the sink, eagerly and compiled alike:
    ``f(a) + f(b)`` counts ``B`` examples, example ``i`` being the pair ``(a_i, b_i)`` (right for
    contrastive / chosen-rejected losses, which couple them; a ``UserWarning`` says so once,
    when both forwards reach the backward). For
    independent examples, call backward after each forward (gradient accumulation) or
    concatenate. A forward of another batch size gets its own sink (its examples are counted
    separately).

    Which input dimension indexes examples is :attr:`example_layout` (found from the model's
    inputs by :func:`fxparam.gns.swap_norms` / :func:`fxparam.gns.monitor`; the leading dim for a
    module used on its own). Under ``torch.func`` transforms (``vmap``, ``grad``) the module is
    its base class's forward: no per-example norms are recorded there.

    Example:
        >>> isinstance(PerExampleRMSNorm(8), PerExampleNormMixin)
        True
    """

    norm_kind: ClassVar[NormKind]
    base_class: ClassVar[type[nn.Module]]
    backend: Backend = "auto"

    @property
    def _gns(self) -> _GNSState:
        st = self.__dict__.get("_fxparam_gns")
        if st is None:
            st = _GNSState()
            self.__dict__["_fxparam_gns"] = st
        return st

    @property
    def gns_accumulator(self) -> SqNormAccumulator:
        """This module's :class:`SqNormAccumulator` (created on first use)."""
        return self._gns.acc

    @property
    def example_layout(self) -> ExampleLayout:
        """Which input dim indexes examples (:class:`ExampleLayout`); the leading dim until set."""
        return self._gns.layout or ExampleLayout()

    def set_example_layout(self, layout: ExampleLayout | int) -> None:
        """Set which input dim indexes examples (an int: that dim, as an override)."""
        if isinstance(layout, int):
            layout = ExampleLayout(dim=layout, source="override")
        st = self._gns
        st.layout = layout
        st.sink, st.pending = None, False

    def tracked_parameters(self) -> dict[str, nn.Parameter]:
        """Local name -> parameter for the parameters whose per-example norms are reported."""
        out: dict[str, nn.Parameter] = {}
        for name in ("weight", "bias"):
            p = getattr(self, name, None)
            if isinstance(p, nn.Parameter):
                out[name] = p
        return out

    def _per_example_extra_repr(self) -> str:
        return f"per_example=True, backend={self.backend!r}"

    def _sink_for(self, n: int, hidden: int, device: torch.device) -> torch.Tensor:
        st = self._gns
        shape = (n, len(st.names), hidden)
        sink = st.sink
        if torch.compiler.is_compiling():
            if sink is None or tuple(sink.shape) != shape or sink.device != device:
                raise GNSError(
                    f"per-example norm {st.fqn or type(self).__name__!r}: no per-example gradient sink of shape "
                    f"{shape} (examples, parameters, hidden) exists for this compiled call (have "
                    f"{None if sink is None else tuple(sink.shape)}); sinks are graph inputs and must be "
                    "allocated before tracing: call fxparam.gns.prepare(model, *inputs) once before the first "
                    "compiled call (or run one eager step), or use fxparam.compile, which does it"
                )
            return sink
        fid = st.root.forward_id if st.root is not None else None
        # Every call until the backward reads the sink's gradient shares it: the same forward (a
        # module used several times) or another forward of the same batch size before one backward
        # (f(a) and f(b) in a contrastive / paired loss: example i of each is one example, as in a
        # compiled model). Another batch size gets its own sink: independent examples.
        reusable = sink is not None and tuple(sink.shape) == shape and sink.device == device
        if not reusable:
            sink = torch.zeros(shape, dtype=torch.float32, device=device, requires_grad=True)
            sink.register_post_accumulate_grad_hook(functools.partial(_consume_sink, st))
            st.sink = sink
        st.pending, st.sink_forward = True, fid
        if fid is None:
            return sink
        # A per-forward alias whose gradient hook records that this forward reached the backward,
        # so a second forward that was never backpropagated is not reported as a pair.
        alias = sink.view(shape)
        alias.register_hook(functools.partial(_mark_forward, st, fid))
        return alias

    def _per_example(
        self, x: torch.Tensor, run: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    ) -> torch.Tensor:
        """``run(x_examples_first, sink)`` with the input laid out examples-first, output laid back."""
        params = [
            (n, p)
            for n, p in (("weight", getattr(self, "weight", None)), ("bias", getattr(self, "bias", None)))
            if isinstance(p, torch.Tensor)
        ]
        if not (torch.is_grad_enabled() and any(p.requires_grad for _, p in params)) or x.dim() == 0:
            return run(x, None)
        st = self._gns
        st.names = tuple(n for n, _ in params)
        layout = self.example_layout
        hidden = x.shape[-1]
        if x.dim() == 1:  # one row: one example
            return run(x.view(1, hidden), self._sink_for(1, hidden, x.device)).view(x.shape)
        if layout.flat:
            n = st.root.n if st.root is not None else None
            rows = x.numel() // max(1, hidden)
            if n is None or n <= 0 or rows % n:
                raise GNSError(
                    f"per-example norm {st.fqn!r}: its input {tuple(x.shape)} flattens examples x positions, "
                    f"and the number of examples from the model input is {n}; pass batch_dim= to "
                    "fxparam.gns.swap_norms / monitor if the example dim is another one"
                )
            xe = x.reshape(n, rows // n, hidden)
            return run(xe, self._sink_for(n, hidden, x.device)).reshape(x.shape)
        d = layout.dim
        if d < 0 or d >= x.dim() - 1:
            raise GNSError(
                f"per-example norm {st.fqn!r}: example dim {d} is not a leading dim of its input {tuple(x.shape)} "
                "(the last dim is the hidden size); fix the batch_dim= override"
            )
        if d == 0:
            return run(x, self._sink_for(x.shape[0], hidden, x.device))
        xe = x.movedim(d, 0).contiguous()
        return run(xe, self._sink_for(x.shape[d], hidden, x.device)).movedim(0, d)

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The base class's forward when a ``torch.func`` transform is active (else None)."""
        if not torch.compiler.is_compiling() and _functorch_active():
            return self.base_class.forward(self, x)  # type: ignore[arg-type]
        return None


class PerExampleLayerNorm(PerExampleNormMixin, nn.LayerNorm):
    """``nn.LayerNorm`` whose backward also reports per-example weight/bias gradient norms.

    Same constructor, parameters and ``state_dict`` keys as ``nn.LayerNorm``; only a 1-D
    ``normalized_shape`` (the last dim) is supported. See :class:`PerExampleNormMixin` for
    how the per-example gradients are collected.

    Example:
        >>> ln = PerExampleLayerNorm(16)
        >>> x = torch.randn(4, 10, 16)
        >>> ln(x).sum().backward()
        >>> ln.gns_accumulator.count
        4
    """

    norm_kind: ClassVar[NormKind] = "layernorm"
    base_class: ClassVar[type[nn.Module]] = nn.LayerNorm

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        if len(self.normalized_shape) != 1:
            raise KernelError(
                f"PerExampleLayerNorm: normalized_shape must be 1-D (the last dim), got {tuple(self.normalized_shape)}"
            )
        plain = self._plain_forward(input)
        if plain is not None:
            return plain
        return self._per_example(
            input,
            lambda x, sink: layer_norm_per_example(
                x, self.weight, self.bias, self.eps, backend=self.backend, grad_sink=sink
            ),
        )

    def extra_repr(self) -> str:
        return f"{nn.LayerNorm.extra_repr(self)}, {self._per_example_extra_repr()}"


class PerExampleRMSNorm(PerExampleNormMixin, nn.RMSNorm):
    """``nn.RMSNorm`` whose backward also reports per-example gain-gradient norms.

    Same constructor, parameters and ``state_dict`` keys as ``nn.RMSNorm`` (1-D
    ``normalized_shape`` only; ``eps=None`` keeps torch's default).

    Example:
        >>> rn = PerExampleRMSNorm(16, eps=1e-6)
        >>> rn(torch.randn(3, 16)).pow(2).sum().backward()
        >>> rn.gns_accumulator.count
        3
    """

    norm_kind: ClassVar[NormKind] = "rmsnorm"
    base_class: ClassVar[type[nn.Module]] = nn.RMSNorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.normalized_shape) != 1:
            raise KernelError(
                f"PerExampleRMSNorm: normalized_shape must be 1-D (the last dim), got {tuple(self.normalized_shape)}"
            )
        plain = self._plain_forward(x)
        if plain is not None:
            return plain
        return self._per_example(
            x,
            lambda xe, sink: rms_norm_per_example(
                xe, self.weight, self.eps, backend=self.backend, grad_sink=sink
            ),
        )

    def extra_repr(self) -> str:
        return f"{nn.RMSNorm.extra_repr(self)}, {self._per_example_extra_repr()}"


class _ForeignPerExampleNorm(PerExampleNormMixin):
    """Mixin for third-party norm classes: their own forward for the output, our backward.

    Per instance: ``_fxparam_eps`` (the epsilon found when the module was swapped) and the
    module's ``weight`` (and ``bias`` for LayerNorm) parameters.
    """

    _fxparam_eps: float

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        plain = self._plain_forward(hidden_states)
        if plain is not None:
            return plain
        base_forward = functools.partial(self.base_class.forward, self)
        weight = getattr(self, "weight", None)
        if self.norm_kind == "rmsnorm":
            return self._per_example(
                hidden_states,
                lambda x, sink: rms_norm_per_example(
                    x,
                    weight,
                    self._fxparam_eps,
                    backend=self.backend,
                    forward_fn=base_forward,
                    grad_sink=sink,
                ),
            )
        return self._per_example(
            hidden_states,
            lambda x, sink: layer_norm_per_example(
                x,
                weight,
                getattr(self, "bias", None),
                self._fxparam_eps,
                backend=self.backend,
                forward_fn=base_forward,
                grad_sink=sink,
            ),
        )

    def extra_repr(self) -> str:
        base = self.base_class.extra_repr(self)  # type: ignore[arg-type]
        return f"{base + ', ' if base else ''}kind={self.norm_kind}, {self._per_example_extra_repr()}"


_CLASS_CACHE: dict[tuple[type, str, bool], type] = {}


def _rebuild(base_cls: type, kind: str, foreign: bool) -> Any:
    cls = per_example_class(base_cls, kind, foreign=foreign)  # type: ignore[arg-type]
    return cls.__new__(cls)


def _reduce_ex(self: Any, protocol: int) -> Any:
    # Dynamic classes are not importable by name: pickle/deepcopy rebuild them from the base.
    return (
        _rebuild,
        (self.base_class, self.norm_kind, isinstance(self, _ForeignPerExampleNorm)),
        self.__getstate__(),
    )


def per_example_class(base_cls: type[nn.Module], kind: NormKind, *, foreign: bool = False) -> type[nn.Module]:
    """The per-example-norm subclass of ``base_cls`` (cached; a class swap target).

    Args:
        base_cls: the norm module class to extend.
        kind: ``"layernorm"`` or ``"rmsnorm"``: the math its forward computes.
        foreign: ``base_cls`` is not ``nn.LayerNorm``/``nn.RMSNorm`` (or a subclass keeping their
            forward): keep its own forward for the output and use the fused backward.

    Returns:
        :class:`PerExampleLayerNorm` / :class:`PerExampleRMSNorm` for the torch classes; else a
        subclass of ``base_cls`` named ``PerExample<Name>``, picklable by reference to the base.

    Example:
        >>> per_example_class(nn.LayerNorm, "layernorm") is PerExampleLayerNorm
        True
    """
    if kind not in ("layernorm", "rmsnorm"):
        raise KernelError(f"per_example_class: kind must be 'layernorm' or 'rmsnorm', got {kind!r}")
    if not foreign and base_cls is nn.LayerNorm:
        return PerExampleLayerNorm
    if not foreign and base_cls is nn.RMSNorm:
        return PerExampleRMSNorm
    key = (base_cls, kind, foreign)
    cls = _CLASS_CACHE.get(key)
    if cls is not None:
        return cls
    if foreign:
        bases: tuple[type, ...] = (_ForeignPerExampleNorm, base_cls)
    else:
        torch_base = PerExampleLayerNorm if kind == "layernorm" else PerExampleRMSNorm
        bases = (torch_base, base_cls)
    tag = re.sub(r"\W", "_", f"{base_cls.__module__}.{base_cls.__qualname__}")
    name = f"PerExample{base_cls.__name__}"
    cls = type(
        name,
        bases,
        {
            "__module__": __name__,
            "__qualname__": f"_dynamic_{tag}_{kind}{'_foreign' if foreign else ''}",
            "norm_kind": kind,
            "base_class": base_cls,
            "__reduce_ex__": _reduce_ex,
        },
    )
    setattr(sys.modules[__name__], cls.__qualname__, cls)
    _CLASS_CACHE[key] = cls
    return cls


__all__ = [
    "Backend",
    "ExampleLayout",
    "GNSRoot",
    "LayerNormPerExampleTriton",
    "NormKind",
    "PerExampleLayerNorm",
    "PerExampleNormMixin",
    "PerExampleRMSNorm",
    "RMSNormPerExampleTriton",
    "SqNormAccumulator",
    "layer_norm_per_example",
    "per_example_class",
    "rms_norm_per_example",
]
