"""The GNS estimators are unbiased on problems with a known answer (with negative controls)."""

from __future__ import annotations

import math

import pytest
import torch

from fxparam.errors import GNSError
from fxparam.gns import EMA, monitor, ratio, two_batch_estimates, unbiased_estimates
from fxparam.kernels import PerExampleRMSNorm


def _within(samples: torch.Tensor, truth: float, k: float = 4.0) -> bool:
    mean = float(samples.mean())
    se = float(samples.std()) / math.sqrt(samples.numel())
    return abs(mean - truth) < k * se


def test_unbiased_on_linear_regression_with_known_covariance():
    """x ~ N(0, I_D), y = x.w* + eps: per-example gradient g = x (x.d - eps), d = w - w*.

    G = d and Sigma = (|d|^2 + s^2) I + d d^T (Isserlis), so |G|^2 = |d|^2 and
    tr(Sigma) = D (|d|^2 + s^2) + |d|^2.
    """
    gen = torch.Generator().manual_seed(0)
    D, B, trials, s = 4, 8, 40_000, 0.7
    d = torch.tensor([1.0, -0.5, 0.25, 0.0], dtype=torch.float64)
    x = torch.randn(trials, B, D, generator=gen, dtype=torch.float64)
    eps = s * torch.randn(trials, B, generator=gen, dtype=torch.float64)
    g = x * ((x @ d) - eps)[..., None]  # (trials, B, D)
    s_small = g.pow(2).sum(-1).mean(-1)
    s_big = g.mean(1).pow(2).sum(-1)
    g2, tr = unbiased_estimates(s_small, s_big, B)
    g2_true = float(d @ d)
    tr_true = D * (g2_true + s * s) + g2_true
    assert _within(g2, g2_true) and _within(tr, tr_true)
    # Negative controls: the uncorrected estimators are biased, and this test can see it.
    assert not _within(s_big, g2_true)  # E|G_B|^2 = |G|^2 + tr/B
    assert not _within(s_small - s_big, tr_true)  # no Bessel correction
    # The ratio of EMAs converges to the true noise scale.
    assert math.isclose(ratio(float(tr.mean()), float(g2.mean())), tr_true / g2_true, rel_tol=0.05)


def test_two_batch_form_is_unbiased_for_micro_batches():
    gen = torch.Generator().manual_seed(1)
    D, B, b, trials = 3, 12, 3, 40_000
    d = torch.tensor([0.8, 0.3, -0.2], dtype=torch.float64)
    x = torch.randn(trials, B, D, generator=gen, dtype=torch.float64)
    g = x * (x @ d)[..., None]
    micro = g.view(trials, B // b, b, D).mean(2)  # micro-batch gradients of size b
    s_small = micro.pow(2).sum(-1).mean(-1)
    s_big = g.mean(1).pow(2).sum(-1)
    g2, tr = two_batch_estimates(s_small, b, s_big, B)
    assert _within(g2, float(d @ d)) and _within(tr, D * float(d @ d) + float(d @ d))


def test_monitor_unbiased_end_to_end_through_norm_kernel():
    """Regression on an RMSNorm gain: f = sum(w * x_hat), loss_b = (f - t)^2 / 2, mean over the batch.

    The truth comes from the closed-form per-example gradient x_hat_b (f_b - t_b) over a large
    population; the monitor only sees the fused kernel's per-example norms and param.grad.
    """
    gen = torch.Generator().manual_seed(2)
    D, B, trials = 6, 8, 1500
    w0 = torch.linspace(0.5, 1.5, D)
    w_star = torch.linspace(1.5, 0.5, D)

    def sample(n):
        u = torch.randn(n, D, generator=gen) + 0.3
        xhat = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6)
        t = xhat @ w_star + 0.3 * torch.randn(n, generator=gen)
        return u, xhat, t

    _, xhat, t = sample(400_000)
    pop = (xhat * ((xhat @ w0) - t)[:, None]).double()  # per-example gradients
    G = pop.mean(0)
    g2_true = float(G @ G)
    tr_true = float(pop.pow(2).sum(-1).mean()) - g2_true

    norm = PerExampleRMSNorm(D, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(w0)
    mon = monitor(norm, batch_dim=0)  # the norm is the whole model: nothing tells examples from tokens
    g2s, trs = [], []
    for _ in range(trials):
        u, _, tt = sample(B)
        f = norm(u[:, None, :]).sum(-1).squeeze(1)  # (B,), one token per example
        (0.5 * (f - tt).pow(2)).mean().backward()
        est = mon.update()
        norm.zero_grad()
        g2s.append(est.total.g2_raw)
        trs.append(est.total.trace_sigma_raw)
    g2s, trs = torch.tensor(g2s, dtype=torch.float64), torch.tensor(trs, dtype=torch.float64)
    assert _within(g2s, g2_true) and _within(trs, tr_true)
    assert not _within(trs * (1 - 1 / B), tr_true)  # negative control: the uncorrected variance


def test_guards_and_ema():
    with pytest.raises(GNSError, match="at least 2 examples"):
        unbiased_estimates(1.0, 1.0, 1)
    assert ratio(math.nan, 1.0) != ratio(math.nan, 1.0)  # NaN
    assert ratio(-1.0, -1.0) != ratio(-1.0, -1.0)
    e = EMA(0.9)
    assert math.isnan(e.value)
    e.update(3.0)
    assert e.value == pytest.approx(3.0)
    e2 = EMA()
    e2.load_state_dict(e.state_dict())
    assert e2.value == e.value
    with pytest.raises(GNSError):
        EMA(1.0)
