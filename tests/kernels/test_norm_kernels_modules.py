"""PerExampleLayerNorm / PerExampleRMSNorm: drop-in for the torch modules, plus the accumulator."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn

from fxparam.errors import KernelError
from fxparam.kernels import (
    PerExampleLayerNorm,
    PerExampleNormMixin,
    PerExampleRMSNorm,
    SqNormAccumulator,
    _norm_triton,
    per_example_class,
)

CASES = [
    (nn.LayerNorm, PerExampleLayerNorm, dict(normalized_shape=24)),
    (nn.LayerNorm, PerExampleLayerNorm, dict(normalized_shape=24, bias=False)),
    (nn.LayerNorm, PerExampleLayerNorm, dict(normalized_shape=24, elementwise_affine=False)),
    (nn.RMSNorm, PerExampleRMSNorm, dict(normalized_shape=24, eps=1e-6)),
    (nn.RMSNorm, PerExampleRMSNorm, dict(normalized_shape=24)),  # eps=None: torch's default
]


def _pair(base_cls, pe_cls, kw):
    ref = base_cls(**kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    pe = pe_cls(**kw)
    pe.load_state_dict(ref.state_dict())
    return ref, pe


@pytest.mark.parametrize("base_cls,pe_cls,kw", CASES)
def test_drop_in_for_torch_module(base_cls, pe_cls, kw):
    ref, pe = _pair(base_cls, pe_cls, kw)
    assert isinstance(pe, base_cls) and isinstance(pe, PerExampleNormMixin)
    assert list(pe.state_dict()) == list(ref.state_dict())
    assert "per_example=True" in repr(pe)
    x = torch.randn(3, 5, 24)
    xr, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yp = ref(xr), pe(xp)
    assert torch.equal(yr, yp)  # the PyTorch path's forward is torch's own kernel
    dy = torch.randn_like(yr)
    yr.backward(dy)
    yp.backward(dy)
    torch.testing.assert_close(xp.grad, xr.grad, atol=1e-5, rtol=1e-5)
    for (n, a), (_, b) in zip(ref.named_parameters(), pe.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=n)
    acc = pe.gns_accumulator
    if list(pe.parameters()):
        assert acc.count == 3 and acc.calls == 1
        assert set(acc.sums) == {n for n, _ in pe.named_parameters()}
    else:
        assert acc.count == 0


@pytest.mark.skipif(
    not _norm_triton.triton_usable(torch.device("cpu")), reason="Triton interpreter unavailable"
)
@pytest.mark.parametrize("base_cls,pe_cls,kw", CASES[:1] + CASES[3:4])
def test_module_triton_backend(base_cls, pe_cls, kw):
    ref, pe = _pair(base_cls, pe_cls, kw)
    pe.backend = "triton"
    x = torch.randn(2, 4, 24)
    torch.testing.assert_close(pe(x), ref(x), atol=1e-5, rtol=1e-5)
    pe(x).sum().backward()
    assert pe.gns_accumulator.count == 2


def test_one_dim_input_is_one_example():
    ln = PerExampleLayerNorm(8)
    ln(torch.randn(8)).sum().backward()
    assert ln.gns_accumulator.count == 1


def test_multi_dim_normalized_shape_rejected():
    ln = PerExampleLayerNorm((4, 8))
    with pytest.raises(KernelError, match="1-D"):
        ln(torch.randn(2, 4, 8))


def test_accumulates_across_backward_calls():
    rn = PerExampleRMSNorm(16)
    rn.gns_accumulator.keep_per_example = True
    for b in (2, 3):
        rn(torch.randn(b, 4, 16)).sum().backward()
    acc = rn.gns_accumulator
    assert acc.count == 5 and acc.calls == 2
    vecs = torch.cat(acc.per_example["weight"])
    assert vecs.shape == (5,)
    torch.testing.assert_close(acc.sums["weight"], vecs.sum())
    acc.reset()
    assert acc.count == 0 and acc.sums == {} and acc.per_example == {}


def test_accumulator_keeps_nothing_by_default():
    acc = SqNormAccumulator()
    acc.add(torch.ones(3), torch.ones(3))
    assert acc.per_example == {} and acc.count == 3


def test_cpu_autocast_output_unchanged():
    ref, pe = _pair(nn.LayerNorm, PerExampleLayerNorm, dict(normalized_shape=24))
    for x in (torch.randn(2, 3, 24), torch.randn(2, 3, 24).bfloat16()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = ref(x), pe(x)
        assert a.dtype == b.dtype and torch.equal(a, b)


class _SubLN(nn.LayerNorm):
    """A subclass that keeps nn.LayerNorm's forward."""


def test_pickle_and_deepcopy_roundtrip():
    ln = PerExampleLayerNorm(8)
    ln.backend = "reference"
    buf = io.BytesIO()
    torch.save(ln, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert type(back) is PerExampleLayerNorm and back.backend == "reference"
    cls = per_example_class(_SubLN, "layernorm")
    m = _SubLN(8)
    m.__class__ = cls
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(clone) is cls and isinstance(clone, _SubLN)
        x = torch.randn(2, 8)
        assert torch.equal(clone(x), m(x))


def test_per_example_class_cached_and_validated():
    assert per_example_class(_SubLN, "layernorm") is per_example_class(_SubLN, "layernorm")
    assert per_example_class(nn.RMSNorm, "rmsnorm") is PerExampleRMSNorm
    with pytest.raises(KernelError, match="kind"):
        per_example_class(nn.LayerNorm, "batchnorm")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_grad_sink_sums_per_example_gradients_over_uses(backend, kind):
    """A module used twice with a per-example gradient sink: sink.grad = per-use per-example grads summed.

    Truth: per-example gradients of weight (and bias) from one-example backward passes of torch's module.
    """
    if backend == "triton" and not _norm_triton.triton_usable(torch.device("cpu")):
        pytest.skip("Triton interpreter not enabled")
    torch.manual_seed(0)
    ref = nn.LayerNorm(16) if kind == "layernorm" else nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    pe = copy.deepcopy(ref)
    pe.__class__ = per_example_class(type(ref), kind)
    pe.backend = backend
    x = torch.randn(3, 5, 16)

    def loss(m, xx):
        return (m(m(xx) * 1.5) ** 2).sum()

    loss(pe, x).backward()
    acc = pe.gns_accumulator
    assert acc.count == 3 and acc.calls == 1  # one backward, three examples: not 2 x 3
    for name, p in ref.named_parameters():
        truth = []
        for b in range(3):
            ref.zero_grad()
            loss(ref, x[b : b + 1]).backward()
            truth.append(p.grad.pow(2).sum())
        torch.testing.assert_close(acc.sums[name], torch.stack(truth).sum(), rtol=1e-4, atol=1e-6, msg=name)
