"""Every private / low-level torch API the kernels touch, in one place (pinned by a test).

``torch.native_layer_norm`` / ``aten.native_layer_norm_backward`` return and take the row
statistics that ``F.layer_norm`` hides, and ``aten._fused_rms_norm`` (torch >= 2.8) returns
RMSNorm's ``rstd``. Using them keeps our forward bitwise equal to ``nn.LayerNorm`` /
``nn.RMSNorm`` without an extra pass to recompute statistics. Where an op is missing we fall
back to the public functional plus an fp32 statistics pass (same outputs, a little slower).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: torch versions these private ops were checked against (tests/kernels/test_compat.py).
TESTED_TORCH = "2.13"

HAS_FUSED_RMS_NORM = hasattr(torch.ops.aten, "_fused_rms_norm")


def native_layer_norm(
    x: torch.Tensor, n: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, rstd)`` over the last dim; mean/rstd keep a trailing singleton dim."""
    return torch.native_layer_norm(x, [n], weight, bias, eps)


def native_layer_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    n: int,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """torch's fused LayerNorm backward: ``(dx, dweight, dbias)`` as selected by ``output_mask``."""
    return torch.ops.aten.native_layer_norm_backward(dy, x, [n], mean, rstd, weight, None, list(output_mask))


def fused_rms_norm(
    x: torch.Tensor, n: int, weight: torch.Tensor | None, eps: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, rstd)`` over the last dim with ``y`` bitwise ``F.rms_norm``'s; fp32 rstd ``(..., 1)``."""
    if HAS_FUSED_RMS_NORM:
        y, rstd = torch.ops.aten._fused_rms_norm(x, [n], weight, eps)
        if rstd.dtype == torch.float32:
            return y, rstd
    else:  # pragma: no cover - older torch
        y = F.rms_norm(x, (n,), weight, eps)
    if eps is None:
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        eps = float(torch.finfo(compute).eps)
    return y, torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps)


__all__ = [
    "HAS_FUSED_RMS_NORM",
    "TESTED_TORCH",
    "fused_rms_norm",
    "native_layer_norm",
    "native_layer_norm_backward",
]
