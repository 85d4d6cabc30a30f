"""Pure-PyTorch LayerNorm / RMSNorm with per-example weight and bias gradient norms.

This module is the spec of the fused kernels and the CPU path used when Triton or a GPU is
absent. It holds two layers:

- the *spec* (``norm_forward_spec``, ``norm_backward_spec``): explicit fp32 math, slow and
  obviously right; the tests compare every other path against it;
- the *CPU path* (``layer_norm_forward``, ``rms_norm_forward``, ``layer_norm_backward``,
  ``rms_norm_backward``, and the autograd Functions ``LayerNormPerExampleRef`` /
  ``RMSNormPerExampleRef``): the same outputs, built from torch's own fused ops where they
  exist so that the forward is bitwise identical to ``nn.LayerNorm`` / ``nn.RMSNorm``.

Math. Inputs are viewed as ``(B, T, N)``: example ``b`` (the leading dim), position ``t`` (all
middle dims flattened), hidden ``n``. With ``x_hat = (x - mean) * rstd`` (LayerNorm) or
``x * rstd`` (RMSNorm), ``y = w * x_hat + bias``:

- ``dweight_b = sum_t dy[b, t] * x_hat[b, t]`` and ``dbias_b = sum_t dy[b, t]``: example ``b``'s
  gradient, tokens summed *before* squaring;
- ``dweight = sum_b dweight_b``, ``dbias = sum_b dbias_b`` (the usual gradients);
- ``sq_weight[b] = |dweight_b|^2``, ``sq_bias[b] = |dbias_b|^2``;
- ``dx`` is the usual norm backward (unchanged).

Scaling: these are gradients of whatever loss produced ``dy``. With a mean-reduced loss over
``B`` examples (and ``K`` accumulation steps), ``dy`` already carries ``1/(B*K)``, so
``dweight_b = G_b / (B*K)`` where ``G_b`` is the gradient of example ``b``'s own loss. The GNS
monitor (:mod:`fxparam.gns`) undoes that factor; the kernels never guess it.

Example:
    >>> x = torch.randn(2, 3, 8, requires_grad=True)
    >>> w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    >>> seen = []
    >>> y = LayerNormPerExampleRef.apply(x, w, b, 1e-5, lambda sw, sb: seen.append((sw, sb)))
    >>> y.sum().backward()
    >>> seen[0][1]  # each example's bias gradient is 3 ones: |.|^2 = 9 * 8
    tensor([72., 72.])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fxparam.errors import KernelError
from fxparam.kernels import _compat

#: Called from backward with ``(sq_weight, sq_bias)``: fp32 ``(B,)`` tensors or None.
SqNormSink = Callable[[torch.Tensor | None, torch.Tensor | None], None]

#: Elements of the fp32 ``x_hat * dy`` transient formed at once (bounds the extra memory).
_CHUNK_ELEMS = 1 << 22


@dataclass(frozen=True)
class NormGrads:
    """Gradients of one norm layer call, with per-example squared norms.

    Attributes:
        dx: gradient of the input, shaped and typed like the input (None if not needed).
        dweight: ``(N,)`` gradient of the gain, in the gain's dtype (None if not needed).
        dbias: ``(N,)`` gradient of the bias (None if no bias / not needed).
        sq_weight: fp32 ``(B,)``, ``|dweight_b|^2`` per example (None with dweight).
        sq_bias: fp32 ``(B,)``, ``|dbias_b|^2`` per example (None with dbias).
        dweight_pe: fp32 ``(B, N)`` per-example gain gradients ``dweight_b`` (None with dweight).
        dbias_pe: fp32 ``(B, N)`` per-example bias gradients ``dbias_b`` (None with dbias).
    """

    dx: torch.Tensor | None
    dweight: torch.Tensor | None
    dbias: torch.Tensor | None
    sq_weight: torch.Tensor | None
    sq_bias: torch.Tensor | None
    dweight_pe: torch.Tensor | None = None
    dbias_pe: torch.Tensor | None = None


def as_examples(x: torch.Tensor) -> torch.Tensor:
    """View ``(B, ..., N)`` as contiguous ``(B, T, N)``; a 1-D input is one example of one row.

    Example:
        >>> as_examples(torch.zeros(2, 3, 4, 5)).shape
        torch.Size([2, 12, 5])
    """
    if x.dim() == 0:
        raise KernelError("norm: input must have at least one dimension (the hidden size), got a scalar")
    if x.dim() == 1:
        return x.reshape(1, 1, x.shape[0])
    x = x.contiguous()
    return x.view(x.shape[0], -1, x.shape[-1])


def reduce_per_example(
    per_example: torch.Tensor | None, dtype: torch.dtype | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """From fp32 per-example gradients ``(B, N)``: the summed gradient (cast to ``dtype``) and ``(B,)`` squared norms.

    Example:
        >>> total, sq = reduce_per_example(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.float32)
        >>> total, sq
        (tensor([4., 2.]), tensor([5., 9.]))
    """
    if per_example is None:
        return None, None
    total = per_example.sum(dim=0)
    sq = (per_example * per_example).sum(dim=-1)
    return (total.to(dtype) if dtype is not None else total), sq


def default_rms_eps(dtype: torch.dtype) -> float:
    """The eps ``nn.RMSNorm(eps=None)`` uses for inputs of ``dtype`` (machine eps of the compute type).

    Example:
        >>> default_rms_eps(torch.bfloat16) == torch.finfo(torch.float32).eps
        True
    """
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return float(torch.finfo(compute).eps)


# --------------------------------------------------------------------------------------------
# The spec: explicit fp32 math.
# --------------------------------------------------------------------------------------------


def norm_forward_spec(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    rms: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Spec forward on ``(B, T, N)``: ``(y, mean, rstd)`` with fp32 ``(B, T)`` statistics.

    ``y`` is computed in fp32 and cast once to ``x.dtype``.

    Example:
        >>> y, mean, rstd = norm_forward_spec(torch.randn(2, 3, 8), None, None, 1e-5, rms=True)
        >>> mean is None, rstd.shape
        (True, torch.Size([2, 3]))
    """
    xf = x.float()
    if rms:
        mean = None
        rstd = torch.rsqrt(xf.pow(2).mean(dim=-1) + eps)
        xhat = xf * rstd[..., None]
    else:
        mean = xf.mean(dim=-1)
        xc = xf - mean[..., None]
        rstd = torch.rsqrt(xc.pow(2).mean(dim=-1) + eps)
        xhat = xc * rstd[..., None]
    y = xhat
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype), mean, rstd


def norm_backward_spec(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    has_bias: bool,
) -> NormGrads:
    """Spec backward on ``(B, T, N)`` with fp32 ``(B, T)`` statistics (``mean=None``: RMSNorm).

    ``dx = rstd * (w*dy - x_hat * mean_n(x_hat * w*dy) - mean_n(w*dy))`` (the last term only for
    LayerNorm); per-example gradients as in the module docstring.

    Example:
        >>> x, dy = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
        >>> _, mean, rstd = norm_forward_spec(x, None, None, 1e-5, rms=False)
        >>> g = norm_backward_spec(dy, x, torch.ones(8), mean, rstd, has_bias=True)
        >>> torch.allclose(g.sq_bias, dy.sum(1).pow(2).sum(-1))
        True
    """
    xf, dyf = x.float(), dy.float()
    r = rstd.float()[..., None]
    xhat = xf * r if mean is None else (xf - mean.float()[..., None]) * r
    wdy = dyf * weight.float() if weight is not None else dyf
    c1 = (xhat * wdy).mean(dim=-1, keepdim=True)
    if mean is None:
        dx = (wdy - xhat * c1) * r
    else:
        c2 = wdy.mean(dim=-1, keepdim=True)
        dx = (wdy - xhat * c1 - c2) * r
    dw_pe = (dyf * xhat).sum(dim=1) if weight is not None else None
    db_pe = dyf.sum(dim=1) if has_bias else None
    dweight, sq_w = reduce_per_example(dw_pe, weight.dtype if weight is not None else None)
    dbias, sq_b = reduce_per_example(db_pe, weight.dtype if weight is not None else torch.float32)
    return NormGrads(dx.to(x.dtype), dweight, dbias, sq_w, sq_b, dw_pe, db_pe)


# --------------------------------------------------------------------------------------------
# CPU path: torch's fused ops for the forward and dx, fp32 per-example partials.
# --------------------------------------------------------------------------------------------


def layer_norm_stats(x3: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(mean, rstd)`` of ``(B, T, N)`` rows, shaped ``(B, T, 1)``.

    Example:
        >>> mean, rstd = layer_norm_stats(torch.randn(2, 3, 8), 1e-5)
        >>> mean.shape, rstd.dtype
        (torch.Size([2, 3, 1]), torch.float32)
    """
    var, mean = torch.var_mean(x3.float(), dim=-1, correction=0, keepdim=True)
    return mean, torch.rsqrt(var + eps)


def rms_norm_stats(x3: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 ``rstd`` of ``(B, T, N)`` rows, shaped ``(B, T, 1)``.

    Example:
        >>> rms_norm_stats(torch.ones(1, 2, 4), 0.0).flatten()
        tensor([1., 1.])
    """
    return torch.rsqrt(x3.float().pow(2).mean(dim=-1, keepdim=True) + eps)


def layer_norm_forward(
    x3: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, rstd)`` from torch's own kernel: ``y`` is bitwise ``F.layer_norm``'s.

    ``mean``/``rstd`` are ``(B, T, 1)`` in the dtype torch returns (fp32 on CUDA; the input
    dtype for half types on CPU).

    Example:
        >>> x = torch.randn(2, 3, 8)
        >>> y, mean, rstd = layer_norm_forward(x, None, None, 1e-5)
        >>> torch.equal(y, torch.nn.functional.layer_norm(x, (8,), None, None, 1e-5))
        True
    """
    return _compat.native_layer_norm(x3, x3.shape[-1], weight, bias, eps)


def rms_norm_forward(
    x3: torch.Tensor, weight: torch.Tensor | None, eps: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, rstd)`` with ``y`` bitwise ``F.rms_norm``'s and fp32 ``(B, T, 1)`` ``rstd``.

    Example:
        >>> y, rstd = rms_norm_forward(torch.randn(2, 3, 8), torch.ones(8), 1e-6)
        >>> rstd.shape
        torch.Size([2, 3, 1])
    """
    return _compat.fused_rms_norm(x3, x3.shape[-1], weight, eps)


def _ln_partials(
    dy3: torch.Tensor,
    x3: torch.Tensor,
    mean32: torch.Tensor,
    rstd32: torch.Tensor,
    need_dw: bool,
    need_db: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """fp32 per-example ``sum_t dy * x_hat`` and ``sum_t dy``, in chunks of examples to bound memory."""
    B, T, N = x3.shape
    db_pe = dy3.sum(dim=1, dtype=torch.float32) if need_db else None
    if not need_dw:
        return None, db_pe
    if _differentiable():
        return ((x3.float() - mean32) * rstd32 * dy3).sum(dim=1), db_pe
    dw_pe = torch.empty((B, N), dtype=torch.float32, device=x3.device)
    step = max(1, _CHUNK_ELEMS // max(1, T * N))
    for s in range(0, B, step):
        e = min(B, s + step)
        t = x3[s:e].float() - mean32[s:e]  # fresh fp32 buffer, reused in place below
        t.mul_(rstd32[s:e]).mul_(dy3[s:e])
        torch.sum(t, dim=1, out=dw_pe[s:e])
    return dw_pe, db_pe


def layer_norm_backward(
    dy3: torch.Tensor,
    x3: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    *,
    eps: float,
    native_stats: bool = True,
    need_dx: bool = True,
    need_dweight: bool = True,
    need_dbias: bool = False,
) -> NormGrads:
    """LayerNorm backward on ``(B, T, N)`` with per-example gradient norms.

    ``dx`` comes from torch's fused backward (``native_layer_norm_backward``); the weight and
    bias gradients come from fp32 per-example partials, so they are summed over examples (not
    computed twice). ``mean``/``rstd`` are ``(B, T, 1)``: either exactly what
    :func:`layer_norm_forward` returned (``native_stats=True``; torch's backward needs their
    dtype, which is the input's for half types on CPU) or fp32 from :func:`layer_norm_stats`.
    Half-precision statistics are recomputed in fp32 for the partials.

    Example:
        >>> x, dy = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
        >>> _, mean, rstd = layer_norm_forward(x, torch.ones(8), None, 1e-5)
        >>> g = layer_norm_backward(dy, x, torch.ones(8), mean, rstd, eps=1e-5, need_dbias=True)
        >>> g.sq_weight.shape, torch.allclose(g.dbias, dy.sum((0, 1)))
        (torch.Size([2]), True)
    """
    N = x3.shape[-1]
    exact_stats = mean.dtype == torch.float32 and rstd.dtype == torch.float32
    mean32, rstd32 = (mean, rstd) if exact_stats else layer_norm_stats(x3, eps)
    dx = None
    if need_dx:
        if native_stats and dy3.dtype == x3.dtype:
            dx = _compat.native_layer_norm_backward(dy3, x3, N, mean, rstd, weight, (True, False, False))[0]
        else:  # our fp32 stats, or mixed dtypes (promoting custom forwards): fp32, cast back
            w32 = weight.float() if weight is not None else None
            dx32 = _compat.native_layer_norm_backward(
                dy3.float(), x3.float(), N, mean32, rstd32, w32, (True, False, False)
            )[0]
            assert dx32 is not None
            dx = dx32.to(x3.dtype)
    dw_pe, db_pe = _ln_partials(dy3, x3, mean32, rstd32, need_dweight and weight is not None, need_dbias)
    wdtype = weight.dtype if weight is not None else torch.float32
    dweight, sq_w = reduce_per_example(dw_pe, wdtype)
    dbias, sq_b = reduce_per_example(db_pe, wdtype)
    return NormGrads(dx, dweight, dbias, sq_w, sq_b, dw_pe, db_pe)


def rms_norm_backward(
    dy3: torch.Tensor,
    x3: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    need_dx: bool = True,
    need_dweight: bool = True,
) -> NormGrads:
    """RMSNorm backward on ``(B, T, N)`` with per-example gradient norms.

    torch has no CPU kernel for the fused RMSNorm backward, so this is the spec's math in fp32,
    sharing ``x_hat`` between ``dx`` and the per-example partials (it is faster than torch's own
    composite RMSNorm backward on CPU).

    Example:
        >>> x, dy, w = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.ones(8)
        >>> _, rstd = rms_norm_forward(x, w, 1e-6)
        >>> rms_norm_backward(dy, x, w, rstd).sq_weight.shape
        torch.Size([2])
    """
    r = rstd.float()
    xhat = x3.float() * r
    dw_pe = None
    if _differentiable():  # torch.func / double backward: no out= and no in-place
        g = dy3.float() * weight.float() if weight is not None else dy3.float()
        dw_pe = (xhat * dy3).sum(dim=1) if need_dweight and weight is not None else None
        dx = ((g - xhat * (xhat * g).mean(dim=-1, keepdim=True)) * r).to(x3.dtype) if need_dx else None
        dweight, sq_w = reduce_per_example(dw_pe, weight.dtype if weight is not None else None)
        return NormGrads(dx, dweight, None, sq_w, None, dw_pe, None)
    if need_dweight and weight is not None:
        dw_pe = torch.empty((x3.shape[0], x3.shape[-1]), dtype=torch.float32, device=x3.device)
        torch.sum(xhat * dy3, dim=1, out=dw_pe)
    dx = None
    if need_dx:
        g = dy3.float() * weight.float() if weight is not None else dy3.float()  # may alias dy: no in-place
        c1 = (xhat * g).mean(dim=-1, keepdim=True)
        dx = (g - xhat.mul_(c1)).mul_(r).to(x3.dtype)  # xhat is ours and dead after this line
    dweight, sq_w = reduce_per_example(dw_pe, weight.dtype if weight is not None else None)
    return NormGrads(dx, dweight, None, sq_w, None, dw_pe, None)


def _differentiable() -> bool:
    """Whether this backward is itself traced (``torch.func`` transforms, ``create_graph=True``): no ``out=``/in-place."""
    return torch.is_grad_enabled() or torch._C._functorch.peek_interpreter_stack() is not None


def _check_hidden(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    n = x.shape[-1] if x.dim() else None
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.dim() != 1 or p.shape[0] != n):
            raise KernelError(
                f"norm: {name} must be 1-D of the hidden size {n} (last input dim), got shape {tuple(p.shape)}; "
                "per-example norm kernels normalise over the last dimension only"
            )


def sink_gradient(
    sink_shape: tuple[int, ...] | None, dweight_pe: torch.Tensor | None, dbias_pe: torch.Tensor | None
) -> torch.Tensor | None:
    """The gradient a norm call returns for its ``grad_sink`` input: fp32 ``(B, P, N)`` per-example gradients.

    ``P`` stacks ``dweight_b`` then ``dbias_b`` (those computed). Autograd sums what several
    calls return for one sink tensor, so a norm used ``k`` times per forward leaves in
    ``sink.grad`` each example's gradient summed over its uses: the per-example gradient of the
    shared parameter (its squared norm is taken after the sum, never per call).

    Raises:
        KernelError: ``sink_shape`` is not ``(B, P, N)`` for this call.

    Example:
        >>> sink_gradient((2, 1, 3), torch.ones(2, 3), None).shape
        torch.Size([2, 1, 3])
    """
    if sink_shape is None:
        return None
    parts = [t for t in (dweight_pe, dbias_pe) if t is not None]
    if not parts:
        return torch.zeros(sink_shape, dtype=torch.float32)
    g = torch.stack(parts, dim=1) if len(parts) > 1 else parts[0].unsqueeze(1)
    if tuple(g.shape) != tuple(sink_shape):
        raise KernelError(
            f"norm: grad_sink has shape {tuple(sink_shape)} but this call's per-example gradients are "
            f"{tuple(g.shape)} (examples, parameters, hidden); allocate the sink for this batch"
        )
    return g


class _LayerNormRefFn(torch.autograd.Function):
    """The autograd Function behind :class:`LayerNormPerExampleRef` (``setup_context`` form).

    ``apply(x, weight, bias, eps, sink, forward_fn, grad_sink) -> (y, mean, rstd)``; the
    statistics are non-differentiable outputs so that the forward needs no ``ctx``
    (``torch.func`` and Dynamo both trace it); ``vmap`` uses the generated rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps, sink=None, forward_fn=None, grad_sink=None):  # type: ignore[override]
        _check_hidden(x, weight, bias)
        x3 = as_examples(x)
        if forward_fn is None:
            y3, mean, rstd = layer_norm_forward(x3, weight, bias, eps)
            return y3.view(x.shape), mean, rstd
        mean, rstd = layer_norm_stats(x3, eps)
        return forward_fn(x), mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, weight, bias, eps, sink, forward_fn, grad_sink = inputs
        _y, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.sink_shape = tuple(grad_sink.shape) if grad_sink is not None else None
        ctx.eps, ctx.sink, ctx.has_bias, ctx.native_stats = eps, sink, bias is not None, forward_fn is None

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        x3 = as_examples(x)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        need_sink = ctx.needs_input_grad[6]
        need_dw, need_db = need_dw or need_sink, need_db or need_sink
        g = layer_norm_backward(
            dy.reshape(x3.shape),
            x3,
            weight,
            mean,
            rstd,
            eps=ctx.eps,
            native_stats=ctx.native_stats,
            need_dx=need_dx,
            need_dweight=need_dw,
            need_dbias=need_db and ctx.has_bias,
        )
        if ctx.sink is not None and (g.sq_weight is not None or g.sq_bias is not None):
            ctx.sink(g.sq_weight, g.sq_bias)
        dsink = sink_gradient(ctx.sink_shape, g.dweight_pe, g.dbias_pe) if need_sink else None
        dx = g.dx.view(x.shape) if g.dx is not None else None
        needs = ctx.needs_input_grad
        return dx, g.dweight if needs[1] else None, g.dbias if needs[2] else None, None, None, None, dsink


class _RMSNormRefFn(torch.autograd.Function):
    """The autograd Function behind :class:`RMSNormPerExampleRef`: ``apply(x, weight, eps, sink, forward_fn, grad_sink) -> (y, rstd)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, eps, sink=None, forward_fn=None, grad_sink=None):  # type: ignore[override]
        _check_hidden(x, weight, None)
        x3 = as_examples(x)
        if forward_fn is None:
            y3, rstd = rms_norm_forward(x3, weight, eps)
            return y3.view(x.shape), rstd
        rstd = rms_norm_stats(x3, eps if eps is not None else default_rms_eps(x.dtype))
        return forward_fn(x), rstd

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        x, weight, _eps, sink, _forward_fn, grad_sink = inputs
        _y, rstd = output
        ctx.mark_non_differentiable(rstd)
        ctx.save_for_backward(x, weight, rstd)
        ctx.sink = sink
        ctx.sink_shape = tuple(grad_sink.shape) if grad_sink is not None else None

    @staticmethod
    def backward(ctx, dy, _drstd):  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        x3 = as_examples(x)
        need_dx, need_dw = ctx.needs_input_grad[:2]
        need_sink = ctx.needs_input_grad[5]
        need_dw = need_dw or need_sink
        g = rms_norm_backward(dy.reshape(x3.shape), x3, weight, rstd, need_dx=need_dx, need_dweight=need_dw)
        if ctx.sink is not None and g.sq_weight is not None:
            ctx.sink(g.sq_weight, None)
        dsink = sink_gradient(ctx.sink_shape, g.dweight_pe, None) if need_sink else None
        dx = g.dx.view(x.shape) if g.dx is not None else None
        return dx, g.dweight if ctx.needs_input_grad[1] else None, None, None, None, dsink


class LayerNormPerExampleRef:
    """LayerNorm whose backward also reports per-example gradients (PyTorch path).

    ``apply(x, weight, bias, eps, sink=None, forward_fn=None, grad_sink=None) -> y``.

    - ``grad_sink``: a leaf tensor of shape ``(B, P, N)`` (``P`` = 2 with a bias gradient, else
      1) that the forward ignores; the backward returns the per-example gradients
      ``[dweight_b, dbias_b]`` as its gradient (see :func:`sink_gradient`). Tensors only: the
      path ``torch.compile(fullgraph=True)`` traces.
    - ``sink``: a Python callback ``sink(sq_weight, sq_bias)`` called once per backward with fp32
      ``(B,)`` squared norms (eager only; Dynamo cannot trace it).
    - ``forward_fn(x)``, when given, computes the output instead of torch's kernel (used for
      third-party norm classes so that their output stays bitwise their own); statistics are
      then recomputed in fp32.

    The Function (``setup_context`` form) works under ``torch.func.grad``.

    Example:
        >>> x = torch.randn(4, 5, 16, requires_grad=True)
        >>> w, b = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
        >>> y = LayerNormPerExampleRef.apply(x, w, b, 1e-5)
        >>> torch.equal(y, torch.nn.functional.layer_norm(x, (16,), w, b, 1e-5))
        True
    """

    @staticmethod
    def apply(x, weight, bias, eps, sink=None, forward_fn=None, grad_sink=None):  # type: ignore[no-untyped-def]
        return _LayerNormRefFn.apply(x, weight, bias, eps, sink, forward_fn, grad_sink)[0]


class RMSNormPerExampleRef:
    """RMSNorm whose backward also reports per-example gain gradients (PyTorch path).

    ``apply(x, weight, eps, sink=None, forward_fn=None, grad_sink=None) -> y``; ``eps=None``
    means torch's default (machine eps of the compute type), as in ``nn.RMSNorm``.
    ``sink(sq_weight, None)``; ``grad_sink`` is ``(B, 1, N)``. See :class:`LayerNormPerExampleRef`.

    Example:
        >>> x = torch.randn(4, 5, 16, requires_grad=True)
        >>> w = torch.randn(16, requires_grad=True)
        >>> y = RMSNormPerExampleRef.apply(x, w, 1e-6)
        >>> torch.equal(y, torch.nn.functional.rms_norm(x, (16,), w, 1e-6))
        True
    """

    @staticmethod
    def apply(x, weight, eps, sink=None, forward_fn=None, grad_sink=None):  # type: ignore[no-untyped-def]
        return _RMSNormRefFn.apply(x, weight, eps, sink, forward_fn, grad_sink)[0]


__all__ = [
    "LayerNormPerExampleRef",
    "NormGrads",
    "RMSNormPerExampleRef",
    "SqNormSink",
    "as_examples",
    "default_rms_eps",
    "layer_norm_backward",
    "layer_norm_forward",
    "layer_norm_stats",
    "norm_backward_spec",
    "norm_forward_spec",
    "reduce_per_example",
    "rms_norm_backward",
    "rms_norm_forward",
    "rms_norm_stats",
    "sink_gradient",
]
