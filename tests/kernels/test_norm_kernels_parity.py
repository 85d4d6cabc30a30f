"""Parity of the per-example norm kernels: Triton (interpreter on CPU) vs the PyTorch path vs the spec,
and per-example gradient norms vs brute-force ``torch.func.vmap(grad)``.

Same inputs and upstream gradient go to every path. Low-precision kernels are compared against the
fp32 spec evaluated on the same low-precision inputs (gns.md: torch's own bf16 autograd is the
noisier side).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from fxparam.errors import KernelError
from fxparam.kernels import _norm_triton
from fxparam.kernels.norms import layer_norm_per_example, rms_norm_per_example
from fxparam.kernels.reference import (
    LayerNormPerExampleRef,
    RMSNormPerExampleRef,
    as_examples,
    norm_backward_spec,
    norm_forward_spec,
)

needs_triton = pytest.mark.skipif(
    not _norm_triton.triton_usable(torch.device("cpu")),
    reason="Triton CPU interpreter unavailable (triton missing or TRITON_INTERPRET unset before import)",
)

# (dtype, atol, rtol) for outputs/gradients stored in `dtype`, and rtol for the fp32 per-example norms.
TOLS = {
    # fp32: both sides are fp32 math in different summation orders.
    torch.float32: (2e-5, 2e-5, 1e-4),
    # bf16: outputs are rounded once to bf16 (8 mantissa bits, ~4e-3 relative) on each side, and the
    # rounding can land one ulp apart; the per-example norms are fp32 math on the same bf16 inputs.
    torch.bfloat16: (2e-2, 2e-2, 1e-3),
}

# (B, T, N, block_n): odd/prime hidden sizes, a power of two, forced column tiling (block_n < N),
# batch 1, a single token, and a hidden size > 4096 (two tiles of the widest block).
SHAPES = [
    (2, 5, 37, None),
    (3, 16, 128, None),
    (1, 7, 96, None),
    (4, 1, 50, None),
    (2, 9, 300, 64),
    (2, 33, 255, None),
    (1, 2, 5003, None),
]


def _inputs(B, T, N, dtype, bias=True, weight=True):
    x = torch.randn(B, T, N) * 2.0 + 0.3
    dy = torch.randn(B, T, N)
    w = torch.randn(N) * 0.5 + 1.0 if weight else None
    b = torch.randn(N) * 0.1 if bias else None
    cast = lambda t: t.to(dtype) if t is not None else None
    return cast(x), cast(dy), cast(w), cast(b)


def _run(fn_kind, backend, x, dy, w, b, eps, block_n=None):
    """Run forward+backward through a functional; return y, grads and per-example norms."""
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True) if w is not None else None
    b = b.clone().requires_grad_(True) if b is not None else None
    got = []
    sink = lambda sw, sb: got.append((sw, sb))
    if fn_kind == "ln":
        y = layer_norm_per_example(x, w, b, eps, sink=sink, backend=backend, block_n=block_n)
    else:
        y = rms_norm_per_example(x, w, eps, sink=sink, backend=backend, block_n=block_n)
    y.backward(dy)
    sw, sb = got[0] if got else (None, None)
    return dict(
        y=y.detach(),
        dx=x.grad,
        dw=w.grad if w is not None else None,
        db=b.grad if b is not None else None,
        sw=sw,
        sb=sb,
    )


def _spec(fn_kind, x, dy, w, b, eps):
    x3 = as_examples(x)
    rms = fn_kind == "rms"
    y, mean, rstd = norm_forward_spec(x3, w, b, eps, rms=rms)
    g = norm_backward_spec(as_examples(dy), x3, w, mean, rstd, has_bias=b is not None)
    return dict(
        y=y.view(x.shape), dx=g.dx.view(x.shape), dw=g.dweight, db=g.dbias, sw=g.sq_weight, sb=g.sq_bias
    )


def _close(got, want, atol, rtol, rtol_sq, keys=("y", "dx", "dw", "db")):
    for k in keys:
        if want[k] is None:
            assert got[k] is None, k
            continue
        assert got[k].dtype == want[k].dtype, (k, got[k].dtype, want[k].dtype)
        torch.testing.assert_close(
            got[k].float(), want[k].float(), atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}"
        )
    for k in ("sw", "sb"):
        if want[k] is None:
            assert got[k] is None, k
            continue
        scale = float(want[k].abs().max()) + 1e-12
        torch.testing.assert_close(
            got[k], want[k], atol=rtol_sq * scale, rtol=rtol_sq, msg=lambda m, k=k: f"{k}: {m}"
        )


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,N,block_n", SHAPES)
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_triton_matches_spec(kind, B, T, N, block_n, dtype):
    atol, rtol, rtol_sq = TOLS[dtype]
    x, dy, w, b = _inputs(B, T, N, dtype, bias=(kind == "ln"))
    got = _run(kind, "triton", x, dy, w, b, 1e-5, block_n=block_n)
    _close(got, _spec(kind, x, dy, w, b, 1e-5), atol, rtol, rtol_sq)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,N,block_n", SHAPES)
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_reference_matches_spec(kind, B, T, N, block_n, dtype):
    atol, rtol, rtol_sq = TOLS[dtype]
    x, dy, w, b = _inputs(B, T, N, dtype, bias=(kind == "ln"))
    got = _run(kind, "reference", x, dy, w, b, 1e-5)
    _close(got, _spec(kind, x, dy, w, b, 1e-5), atol, rtol, rtol_sq)


@pytest.mark.parametrize("kind", ["ln", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_forward_is_bitwise_torch(kind, dtype):
    x, _, w, b = _inputs(3, 7, 45, dtype, bias=(kind == "ln"))
    if kind == "ln":
        assert torch.equal(LayerNormPerExampleRef.apply(x, w, b, 1e-5), F.layer_norm(x, (45,), w, b, 1e-5))
    else:
        assert torch.equal(RMSNormPerExampleRef.apply(x, w, 1e-6), F.rms_norm(x, (45,), w, 1e-6))
        assert torch.equal(RMSNormPerExampleRef.apply(x, w, None), F.rms_norm(x, (45,), w, None))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_grads_match_torch_autograd(kind, backend):
    x, dy, w, b = _inputs(2, 6, 40, torch.float32, bias=(kind == "ln"))
    got = _run(kind, backend, x, dy, w, b, 1e-5)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    br = b.clone().requires_grad_() if b is not None else None
    yr = F.layer_norm(xr, (40,), wr, br, 1e-5) if kind == "ln" else F.rms_norm(xr, (40,), wr, 1e-5)
    yr.backward(dy)
    torch.testing.assert_close(got["y"], yr.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["dx"], xr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["dw"], wr.grad, atol=1e-5, rtol=1e-5)
    if br is not None:
        torch.testing.assert_close(got["db"], br.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("kind", ["ln", "rms"])
@pytest.mark.parametrize("shape", [(3, 5, 24), (1, 4, 17), (2, 3, 2, 20), (4, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_example_norms_match_vmap_bruteforce(kind, backend, shape, dtype):
    """Example b's own loss sum(y_b * R_b) has gradient G_b; the kernel's sq norms must be |G_b|^2.

    bf16: the kernel gets bf16 tensors; the brute force runs in fp32 on the same (bf16-valued)
    numbers, so only the kernel's fp32-accumulation order differs.
    """
    N = shape[-1]
    low = lambda t: t.to(dtype) if t is not None else None
    x, R, w = low(torch.randn(shape) * 1.5 + 0.2), low(torch.randn(shape)), low(torch.randn(N))
    b = low(torch.randn(N)) if kind == "ln" else None
    got = _run(kind, backend, x, R, w, b, 1e-5)
    x, R, w = x.float(), R.float(), w.float()
    b = b.float() if b is not None else None

    def example_loss(params, xb, rb):
        xb, rb = xb[None], rb[None]
        if kind == "ln":
            y = F.layer_norm(xb, (N,), params["w"], params["b"], 1e-5)
        else:
            y = F.rms_norm(xb, (N,), params["w"], 1e-5)
        return (y * rb).sum()

    params = {"w": w, "b": b} if b is not None else {"w": w, "b": None}
    if b is None:
        per = vmap(grad(lambda p, xb, rb: example_loss({"w": p, "b": None}, xb, rb)), in_dims=(None, 0, 0))(
            w, x, R
        )
        want_sw, want_sb = per.pow(2).sum(-1), None
    else:
        per = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, R)
        want_sw, want_sb = per["w"].pow(2).sum(-1), per["b"].pow(2).sum(-1)
    rtol = 1e-4 if dtype == torch.float32 else 2e-3  # bf16: x_hat from bf16 x, statistics in fp32 either way
    torch.testing.assert_close(got["sw"], want_sw, rtol=rtol, atol=1e-5)
    if want_sb is not None:
        torch.testing.assert_close(got["sb"], want_sb, rtol=rtol, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_mixed_dtypes_bf16_input_fp32_params(kind, backend):
    """bf16 activations with fp32 parameters (no autocast): torch's output dtype and gradient dtypes."""
    x = (torch.randn(2, 5, 40) + 0.3).bfloat16().requires_grad_()
    w = torch.randn(40, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if kind == "ln" else None
    got = []
    if kind == "ln":
        y = layer_norm_per_example(x, w, b, 1e-5, sink=lambda sw, sb: got.append(sw), backend=backend)
        want = F.layer_norm(x, (40,), w, b, 1e-5)
    else:
        y = rms_norm_per_example(x, w, 1e-5, sink=lambda sw, sb: got.append(sw), backend=backend)
        want = F.rms_norm(x, (40,), w, 1e-5)
    assert y.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want.float(), atol=2e-2, rtol=2e-2)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    spec = _spec(kind, x.detach(), dy, w.detach(), None if b is None else b.detach(), 1e-5)
    torch.testing.assert_close(got[0], spec["sw"], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_partial_requirements(backend):
    """No weight / frozen weight / bias only / dx only: absent norms are None, the rest still right."""
    x, dy, w, b = _inputs(2, 4, 20, torch.float32)
    # no affine at all: no sink call, dx still right
    xr = x.clone().requires_grad_()
    calls = []
    layer_norm_per_example(xr, None, None, 1e-5, sink=lambda *a: calls.append(a), backend=backend).backward(
        dy
    )
    xt = x.clone().requires_grad_()
    F.layer_norm(xt, (20,), None, None, 1e-5).backward(dy)
    torch.testing.assert_close(xr.grad, xt.grad, atol=1e-5, rtol=1e-5)
    assert calls == []
    # frozen weight, trainable bias: only the bias norms
    xr = x.clone().requires_grad_()
    bb = b.clone().requires_grad_()
    got = []
    layer_norm_per_example(
        xr, w, bb, 1e-5, sink=lambda sw, sb: got.append((sw, sb)), backend=backend
    ).backward(dy)
    assert got[0][0] is None
    torch.testing.assert_close(got[0][1], dy.sum(1).pow(2).sum(-1), rtol=1e-5, atol=1e-5)
    # input does not need grad
    ww = w.clone().requires_grad_()
    got = []
    rms_norm_per_example(x, ww, 1e-5, sink=lambda sw, sb: got.append(sw), backend=backend).backward(dy)
    assert got[0].shape == (2,) and ww.grad is not None


@needs_triton
def test_triton_deterministic():
    x, dy, w, b = _inputs(3, 40, 130, torch.float32)
    a = _run("ln", "triton", x, dy, w, b, 1e-5, block_n=64)
    c = _run("ln", "triton", x, dy, w, b, 1e-5, block_n=64)
    for k in ("dx", "dw", "db", "sw", "sb"):
        assert torch.equal(a[k], c[k]), k


def test_errors_name_sizes():
    x = torch.randn(2, 3, 8)
    with pytest.raises(KernelError, match="hidden size 8"):
        layer_norm_per_example(x, torch.ones(7), None)
    with pytest.raises(KernelError, match="backend must be one of"):
        layer_norm_per_example(x, torch.ones(8), None, backend="cuda")  # type: ignore[arg-type]
    if not _norm_triton.triton_usable(torch.device("cpu")):
        with pytest.raises(KernelError, match="TRITON_INTERPRET"):
            layer_norm_per_example(x, torch.ones(8), None, backend="triton")
    if _norm_triton.HAS_TRITON:
        with pytest.raises(KernelError, match="3-D"):
            _norm_triton.norm_fwd_triton(torch.randn(4, 8), None, None, 1e-5, rms=True)
        with pytest.raises(KernelError, match="power of two"):
            _norm_triton.norm_fwd_triton(x, None, None, 1e-5, rms=True, block_n=24)


def test_auto_backend_is_reference_on_cpu():
    x = torch.randn(2, 3, 8, requires_grad=True)
    w = torch.ones(8, requires_grad=True)
    y = layer_norm_per_example(x, w, None)
    assert "Ref" in type(y.grad_fn).__name__


@needs_triton
@pytest.mark.parametrize("kind", ["ln", "rms"])
@pytest.mark.parametrize("B,T,N,block_n", [(2, 70, 256, None), (2, 140, 200, 64)])
def test_triton_programs_loop_over_token_blocks(kind, B, T, N, block_n):
    """More token blocks than programs per example: partials accumulate over a program's blocks
    (in registers for one column tile, in its own slice of the partial buffer when tiled)."""
    bt, _ = _norm_triton._block_sizes(T, N, block_n)
    assert -(-T // bt) > _norm_triton._n_splits(B, -(-T // bt), torch.device("cpu"))
    x, dy, w, b = _inputs(B, T, N, torch.float32, bias=(kind == "ln"))
    atol, rtol, rtol_sq = TOLS[torch.float32]
    got = _run(kind, "triton", x, dy, w, b, 1e-5, block_n=block_n)
    _close(got, _spec(kind, x, dy, w, b, 1e-5), atol, rtol, rtol_sq)
