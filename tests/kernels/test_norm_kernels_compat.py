"""The private torch ops the kernels use (fxparam/kernels/_compat.py), pinned to the torch version."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxparam.kernels import _compat


def test_torch_version_pinned():
    # If this fails after a torch upgrade, re-check the ops below and bump TESTED_TORCH.
    assert torch.__version__.startswith(_compat.TESTED_TORCH), (torch.__version__, _compat.TESTED_TORCH)


def test_native_layer_norm_matches_functional():
    x, w, b = torch.randn(2, 3, 10), torch.randn(10), torch.randn(10)
    y, mean, rstd = _compat.native_layer_norm(x, 10, w, b, 1e-5)
    assert torch.equal(y, F.layer_norm(x, (10,), w, b, 1e-5))
    assert mean.shape == rstd.shape == (2, 3, 1)
    dx = _compat.native_layer_norm_backward(torch.ones_like(x), x, 10, mean, rstd, w, (True, False, False))[0]
    assert dx.shape == x.shape


def test_fused_rms_norm_matches_functional():
    assert _compat.HAS_FUSED_RMS_NORM
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(2, 3, 10, dtype=dtype), torch.randn(10, dtype=dtype)
        for eps in (1e-6, None):
            y, rstd = _compat.fused_rms_norm(x, 10, w, eps)
            assert torch.equal(y, F.rms_norm(x, (10,), w, eps))
            assert rstd.dtype == torch.float32 and rstd.shape == (2, 3, 1)
