"""Triton LayerNorm / RMSNorm forward and backward with per-example weight/bias gradient norms.

Layering (Liger-Kernel style): ``_norm_fwd_kernel`` / ``_norm_bwd_kernel`` are the Triton
programs; ``norm_fwd_triton`` / ``norm_bwd_triton`` are the host functions that validate
shapes, pick block sizes and launch. The autograd Functions live in :mod:`fxparam.kernels.norms`
and the pure-PyTorch spec in :mod:`fxparam.kernels.reference`.

Design (see ``docs/reference/gns.md``): the input is viewed as ``(B, T, N)`` (example,
position, hidden). The backward grid is ``(B, n_splits)``: program ``(b, s)`` handles the rows
of example ``b`` in token blocks ``s, s + n_splits, ...`` and writes its partial sums of
``dy * x_hat`` (for dweight) and ``dy`` (for dbias) into a deterministic fp32 buffer
``[B, n_splits, N]``. Summing those over the split axis gives the per-example gradients
``dweight_b`` (tokens summed *before* squaring); their squared norms and the usual
``dweight = sum_b dweight_b`` come from that tiny ``[B, N]`` tensor. No atomics, so the
result is bitwise reproducible, and no per-example gradient larger than ``[B, N]`` exists.

Numerics: every load is upcast to fp32 right away (bf16 arithmetic is wrong in the
interpreter and imprecise on GPU); statistics, partial sums and ``dx`` are computed in fp32 and
cast once on store. Very wide rows (``N > BLOCK_N``) loop over column tiles: statistics first,
then the output.
"""

from __future__ import annotations

import os

import torch

from fxparam.errors import KernelError

try:  # Triton ships wheels for Linux x86_64 only; elsewhere the reference path is used.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    HAS_TRITON = False

#: Widest column tile a program holds at once; wider rows loop over tiles of this size.
MAX_BLOCK_N = 4096
#: Upper bound on elements in one ``[BLOCK_T, BLOCK_N]`` register tile.
MAX_TILE_ELEMS = 8192


def interpreter_enabled() -> bool:
    """Whether Triton runs through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors on ``device``.

    CUDA tensors need Triton installed; CPU tensors need the interpreter (``TRITON_INTERPRET=1``
    set before the kernels were defined), which is only meant for tests.
    """
    if not HAS_TRITON:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_enabled()


if HAS_TRITON:

    @triton.jit
    def _norm_fwd_kernel(
        X,  # [M, N] input rows (M = B*T), row stride stride_x
        Y,  # [M, N] output rows, row stride stride_y
        W,  # [N] weight (unused when HAS_WEIGHT is False)
        Bias,  # [N] bias (unused when HAS_BIAS is False)
        Mean,  # [M] fp32 row means (LayerNorm only)
        Rstd,  # [M] fp32 row 1/sqrt(var + eps)
        stride_x,
        stride_y,
        M,
        N,
        eps,
        IS_RMS: tl.constexpr,
        HAS_WEIGHT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        row_mask = rows < M
        rows64 = rows.to(tl.int64)  # row * stride can exceed int32 for big activations
        # Pass 1: the mean (LayerNorm only). fp32 sums; masked lanes load 0.
        if IS_RMS:
            mean = tl.zeros([BLOCK_T], dtype=tl.float32)
        else:
            acc = tl.zeros([BLOCK_T], dtype=tl.float32)
            for n0 in range(0, N, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N)
                mask = row_mask[:, None] & (cols < N)[None, :]
                x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(
                    tl.float32
                )
                acc += tl.sum(x, axis=1)
            mean = acc / N
        # Pass 2: variance about the mean (two-pass, not E[x^2]-E[x]^2, to avoid cancellation).
        acc2 = tl.zeros([BLOCK_T], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            mask = row_mask[:, None] & (cols < N)[None, :]
            x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            xc = tl.where(mask, x - mean[:, None], 0.0)
            acc2 += tl.sum(xc * xc, axis=1)
        rstd = 1.0 / tl.sqrt(acc2 / N + eps)
        if not IS_RMS:
            tl.store(Mean + rows, mean, mask=row_mask)
        tl.store(Rstd + rows, rstd, mask=row_mask)
        # Pass 3: y = x_hat * w + b, computed in fp32 and cast once on store.
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_mask = cols < N
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y = (x - mean[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
                y = y * w[None, :]
            if HAS_BIAS:
                b = tl.load(Bias + cols, mask=col_mask, other=0.0).to(tl.float32)
                y = y + b[None, :]
            tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _norm_bwd_kernel(
        X,  # [B*T, N] input rows, row stride stride_x
        DY,  # [B*T, N] upstream gradient rows, row stride stride_dy
        DX,  # [B*T, N] input gradient rows (written), row stride stride_dx
        W,  # [N] weight (unused when HAS_WEIGHT is False)
        Mean,  # [B*T] fp32 row means (LayerNorm only)
        Rstd,  # [B*T] fp32 row 1/sqrt(var + eps)
        DW_PART,  # [B, n_splits, N] fp32 per-example partial sums of dy * x_hat (written)
        DB_PART,  # [B, n_splits, N] fp32 per-example partial sums of dy (written)
        stride_x,
        stride_dy,
        stride_dx,
        T,
        N,
        n_splits,
        IS_RMS: tl.constexpr,
        HAS_WEIGHT: tl.constexpr,
        NEED_DW: tl.constexpr,
        NEED_DB: tl.constexpr,
        SINGLE_TILE: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_s = tl.program_id(1)
        n_tblocks = tl.cdiv(T, BLOCK_T)
        part_off = (pid_b * n_splits + pid_s).to(tl.int64) * N
        if SINGLE_TILE:
            # The whole row fits one tile: x and dy are loaded once per token block, and the
            # per-example partials stay in registers across this program's token blocks.
            cols = tl.arange(0, BLOCK_N)
            col_mask = cols < N
            if HAS_WEIGHT:
                w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for tb in range(pid_s, n_tblocks, n_splits):
                t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
                row_mask = t < T
                rows = (pid_b * T + t).to(tl.int64)
                mask = row_mask[:, None] & col_mask[None, :]
                x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(
                    tl.float32
                )
                rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
                if IS_RMS:
                    xhat = x * rstd[:, None]
                else:
                    mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
                    xhat = (x - mean[:, None]) * rstd[:, None]
                xhat = tl.where(mask, xhat, 0.0)
                if HAS_WEIGHT:
                    wdy = dy * w[None, :]
                else:
                    wdy = dy
                c1 = tl.sum(xhat * wdy, axis=1) / N
                if IS_RMS:
                    dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
                else:
                    c2 = tl.sum(wdy, axis=1) / N
                    dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
                tl.store(
                    DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask
                )
                if NEED_DW:
                    dw_acc += tl.sum(dy * xhat, axis=0)
                if NEED_DB:
                    db_acc += tl.sum(dy, axis=0)
            if NEED_DW:
                tl.store(DW_PART + part_off + cols, dw_acc, mask=col_mask)
            if NEED_DB:
                tl.store(DB_PART + part_off + cols, db_acc, mask=col_mask)
        else:
            # Wide rows: per token block, pass 1 over column tiles forms the row sums c1, c2
            # and adds this block's partials into the program's own slice of DW_PART/DB_PART
            # (zero-initialised on the host; no other program touches the slice, so the
            # read-modify-write is race-free and deterministic); pass 2 writes dx.
            for tb in range(pid_s, n_tblocks, n_splits):
                t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
                row_mask = t < T
                rows = (pid_b * T + t).to(tl.int64)
                rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
                if IS_RMS:
                    mean = tl.zeros([BLOCK_T], dtype=tl.float32)
                else:
                    mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
                c1 = tl.zeros([BLOCK_T], dtype=tl.float32)
                c2 = tl.zeros([BLOCK_T], dtype=tl.float32)
                for n0 in range(0, N, BLOCK_N):
                    cols = n0 + tl.arange(0, BLOCK_N)
                    col_mask = cols < N
                    mask = row_mask[:, None] & col_mask[None, :]
                    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(
                        tl.float32
                    )
                    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(
                        tl.float32
                    )
                    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
                    if HAS_WEIGHT:
                        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
                        wdy = dy * w[None, :]
                    else:
                        wdy = dy
                    c1 += tl.sum(xhat * wdy, axis=1)
                    c2 += tl.sum(wdy, axis=1)
                    if NEED_DW:
                        prev = tl.load(DW_PART + part_off + cols, mask=col_mask, other=0.0)
                        tl.store(DW_PART + part_off + cols, prev + tl.sum(dy * xhat, axis=0), mask=col_mask)
                    if NEED_DB:
                        prev_b = tl.load(DB_PART + part_off + cols, mask=col_mask, other=0.0)
                        tl.store(DB_PART + part_off + cols, prev_b + tl.sum(dy, axis=0), mask=col_mask)
                    # Make this program's partial stores visible to all its threads before the
                    # next token block reads them back (a CTA-wide barrier on GPU; no-op in the
                    # interpreter, where programs are sequential).
                    tl.debug_barrier()
                c1 = c1 / N
                c2 = c2 / N
                for n0 in range(0, N, BLOCK_N):
                    cols = n0 + tl.arange(0, BLOCK_N)
                    col_mask = cols < N
                    mask = row_mask[:, None] & col_mask[None, :]
                    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(
                        tl.float32
                    )
                    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(
                        tl.float32
                    )
                    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
                    if HAS_WEIGHT:
                        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
                        wdy = dy * w[None, :]
                    else:
                        wdy = dy
                    if IS_RMS:
                        dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
                    else:
                        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
                    tl.store(
                        DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask
                    )


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _block_sizes(rows: int, n: int, block_n: int | None) -> tuple[int, int]:
    """BLOCK_T, BLOCK_N: tiles are powers of two (``tl.arange`` needs it), at most MAX_TILE_ELEMS."""
    bn = block_n if block_n is not None else min(_next_pow2(n), MAX_BLOCK_N)
    if bn <= 0 or bn & (bn - 1):
        raise KernelError(f"norm kernel: block_n must be a positive power of two, got {block_n}")
    bt = max(1, min(_next_pow2(max(rows, 1)), MAX_TILE_ELEMS // bn, 64))
    return bt, bn


def _num_warps(bt: int, bn: int) -> int:
    return 8 if bt * bn >= 4096 else 4


def _check_3d(name: str, t: torch.Tensor) -> None:
    if t.dim() != 3:
        raise KernelError(
            f"norm kernel: {name} must be 3-D (batch, tokens, hidden), got shape {tuple(t.shape)}"
        )


def _check_vec(name: str, t: torch.Tensor | None, n: int, device: torch.device) -> None:
    if t is None:
        return
    if t.dim() != 1 or t.shape[0] != n:
        raise KernelError(
            f"norm kernel: {name} must have shape ({n},) to match hidden size {n}, got {tuple(t.shape)}"
        )
    if t.device != device:
        raise KernelError(
            f"norm kernel: {name} is on {t.device} but the input is on {device}; move them together"
        )


def norm_fwd_triton(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    rms: bool,
    out_dtype: torch.dtype | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """LayerNorm / RMSNorm forward.

    Args:
        x: ``(B, T, N)`` input (made contiguous if it is not).
        weight: ``(N,)`` gain or None.
        bias: ``(N,)`` bias or None (must be None for RMSNorm).
        eps: added to the variance (mean square for RMSNorm).
        rms: RMSNorm (no centering, no bias) instead of LayerNorm.
        out_dtype: dtype of ``y`` (default: ``x.dtype``).
        block_n: column tile override (power of two; tests use it to force tiling).

    Returns:
        ``(y, mean, rstd)``: ``y`` shaped like ``x``; ``mean`` (None for RMSNorm) and ``rstd``
        are fp32 ``(B, T)``.
    """
    if not HAS_TRITON:
        raise KernelError("norm kernel: triton is not installed; use backend='reference'")
    _check_3d("x", x)
    B, T, N = x.shape
    _check_vec("weight", weight, N, x.device)
    _check_vec("bias", bias, N, x.device)
    if rms and bias is not None:
        raise KernelError("norm kernel: RMSNorm has no bias; got a bias tensor")
    y = torch.empty((B, T, N), dtype=out_dtype or x.dtype, device=x.device)
    mean = None if rms else torch.empty((B, T), dtype=torch.float32, device=x.device)
    rstd = torch.empty((B, T), dtype=torch.float32, device=x.device)
    M = B * T
    if M == 0 or N == 0:
        return y, mean, rstd
    x2 = x.contiguous().view(M, N)
    bt, bn = _block_sizes(M, N, block_n)
    dummy = rstd  # never read when the matching HAS_* flag is off
    _norm_fwd_kernel[(triton.cdiv(M, bt),)](
        x2,
        y,
        weight if weight is not None else dummy,
        bias if bias is not None else dummy,
        mean if mean is not None else dummy,
        rstd,
        x2.stride(0),
        N,
        M,
        N,
        float(eps),
        IS_RMS=rms,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_T=bt,
        BLOCK_N=bn,
        num_warps=_num_warps(bt, bn),
    )
    return y, mean, rstd


def _n_splits(B: int, n_tblocks: int, device: torch.device) -> int:
    """Token-block splits per example: enough programs to fill the GPU, few partial rows."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, (4 * sms + B - 1) // max(B, 1))
    else:  # interpreter: programs run one by one, fewer is faster
        target = 2
    return max(1, min(n_tblocks, target))


def norm_bwd_triton(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    need_dweight: bool,
    need_dbias: bool,
    dx_dtype: torch.dtype | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """LayerNorm / RMSNorm backward with per-example weight and bias gradients.

    Args:
        dy: ``(B, T, N)`` upstream gradient.
        x: ``(B, T, N)`` forward input.
        weight: ``(N,)`` gain or None.
        mean: fp32 ``(B, T)`` row means from the forward, or None for RMSNorm.
        rstd: fp32 ``(B, T)`` from the forward.
        need_dweight: form per-example ``dy * x_hat`` sums.
        need_dbias: form per-example ``dy`` sums (LayerNorm with bias).
        dx_dtype: dtype of ``dx`` (default ``x.dtype``).
        block_n: column tile override (power of two).

    Returns:
        ``(dx, dweight_per_example, dbias_per_example)``: ``dx`` like ``x``; the per-example
        gradients are fp32 ``(B, N)`` (None when not requested): example ``b``'s gradient of
        the loss that produced ``dy``.
    """
    if not HAS_TRITON:
        raise KernelError("norm kernel: triton is not installed; use backend='reference'")
    _check_3d("x", x)
    _check_3d("dy", dy)
    if dy.shape != x.shape:
        raise KernelError(f"norm kernel: dy shape {tuple(dy.shape)} != x shape {tuple(x.shape)}")
    B, T, N = x.shape
    _check_vec("weight", weight, N, x.device)
    rms = mean is None
    for name, s in (("rstd", rstd), ("mean", mean)):
        if s is not None and (tuple(s.shape) != (B, T) or s.dtype != torch.float32):
            raise KernelError(
                f"norm kernel: {name} must be fp32 of shape ({B}, {T}), got {s.dtype} {tuple(s.shape)}"
            )
    dx = torch.empty((B, T, N), dtype=dx_dtype or x.dtype, device=x.device)
    if B * T == 0 or N == 0:
        z = torch.zeros((B, N), dtype=torch.float32, device=x.device)
        return dx, (z if need_dweight else None), (z.clone() if need_dbias else None)
    x = x.contiguous()
    dy = dy.contiguous()
    rstd = rstd.contiguous()
    mean = mean.contiguous() if mean is not None else None
    bt, bn = _block_sizes(T, N, block_n)
    n_tblocks = triton.cdiv(T, bt)
    splits = _n_splits(B, n_tblocks, x.device)
    single = N <= bn
    alloc = torch.empty if single else torch.zeros  # tiled path accumulates into the buffer
    dw_part = alloc((B, splits, N), dtype=torch.float32, device=x.device) if need_dweight else None
    db_part = alloc((B, splits, N), dtype=torch.float32, device=x.device) if need_dbias else None
    dummy = rstd
    _norm_bwd_kernel[(B, splits)](
        x,
        dy,
        dx,
        weight if weight is not None else dummy,
        mean if mean is not None else dummy,
        rstd,
        dw_part if dw_part is not None else dummy,
        db_part if db_part is not None else dummy,
        N,
        N,
        N,
        T,
        N,
        splits,
        IS_RMS=rms,
        HAS_WEIGHT=weight is not None,
        NEED_DW=need_dweight,
        NEED_DB=need_dbias,
        SINGLE_TILE=single,
        BLOCK_T=bt,
        BLOCK_N=bn,
        num_warps=_num_warps(bt, bn),
    )
    # Deterministic epilogue: a fixed-order sum over the (few) splits.
    dw_pe = dw_part.sum(dim=1) if dw_part is not None else None
    db_pe = db_part.sum(dim=1) if db_part is not None else None
    return dx, dw_pe, db_pe


__all__ = ["HAS_TRITON", "interpreter_enabled", "norm_bwd_triton", "norm_fwd_triton", "triton_usable"]
