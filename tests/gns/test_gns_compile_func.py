"""GNS under torch.compile(fullgraph=True) and torch.func (issue 15, items 3 and 4).

Compiled estimates are compared with eager ones on identical weights and data; the eager path
itself is checked against one-example backward passes in test_gns_layouts.py / test_gns_monitor.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _gns_helpers import batch, per_example_grads, swapped_tiny_gpt
from test_gns_layouts import _lm_loss, shared_block_gpt
from torch.func import functional_call, grad, vmap

import fxparam
from fxparam.gns import monitor, prepare, swap_norms
from fxparam.kernels.reference import LayerNormPerExampleRef, RMSNormPerExampleRef
from fxparam.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

KW = {"base_width": 32, "base_depth": 2}
FIELDS = ("batch_size", "s_small", "s_big", "g2_raw", "trace_sigma_raw")


def _train(model, mon, steps: int = 3, B: int = 4) -> list[tuple[float, ...]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = []
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        idx = torch.randint(0, 64, (B, 12), generator=g)
        tgt = torch.randint(0, 64, (B, 12), generator=g)
        model(idx, tgt)[1].backward()
        est = mon.update()
        out.append(tuple(getattr(est.total, f) for f in FIELDS))
        opt.step()
        opt.zero_grad()
    return out


def _assert_same(a, b, rel: float) -> None:
    for step_a, step_b in zip(a, b, strict=True):
        assert step_a[0] == step_b[0]
        for x, y, name in zip(step_a[1:], step_b[1:], FIELDS[1:], strict=True):
            assert math.isclose(x, y, rel_tol=rel, abs_tol=1e-12), (name, x, y)


def _compile_vs_eager(inner: str, rel: float) -> None:
    torch.manual_seed(0)
    base = GPT(GPTConfig(width=32, depth=2, head_dim=16, vocab=64, seq_len=16))
    eager = copy.deepcopy(base)
    fxparam.transform(eager, "completep+gns", init=False, **KW)
    compiled = fxparam.compile(
        copy.deepcopy(base), "completep+gns", init=False, fullgraph=True, inner=inner, **KW
    )
    want = _train(eager, monitor(eager))
    got = _train(compiled, monitor(compiled))
    assert [s[0] for s in got] == [4, 4, 4]
    _assert_same(got, want, rel)
    # Negative control: a different batch gives different estimates (the comparison can fail).
    other = copy.deepcopy(base)
    fxparam.transform(other, "completep+gns", init=False, **KW)
    assert not math.isclose(_train(other, monitor(other), steps=1, B=6)[0][1], want[0][1], rel_tol=1e-3)


def test_fxparam_compile_fullgraph_gns_matches_eager():
    """``fxparam.compile(model, "completep+gns", fullgraph=True)``: 3 steps, estimates equal eager's."""
    torch._dynamo.reset()
    _compile_vs_eager("aot_eager", rel=1e-6)


@pytest.mark.slow
def test_fxparam_compile_fullgraph_gns_inductor_matches_eager():
    torch._dynamo.reset()
    _compile_vs_eager("inductor", rel=1e-4)


def test_shared_norm_compiled_equals_eager_and_unprepared_compile_is_loud():
    """Norms used 3 times per forward under torch.compile(fullgraph=True): autograd sums the sink there too."""
    torch._dynamo.reset()
    idx = torch.randint(0, 64, (6, 10), generator=torch.Generator().manual_seed(3))
    eager = shared_block_gpt()
    swap_norms(eager)
    mon_e = monitor(eager)
    _lm_loss(eager, idx).backward()
    want = mon_e.per_example_sq_norms()

    model = shared_block_gpt()
    swap_norms(model)
    mon = monitor(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"fxparam\.gns\.prepare"):
        _lm_loss(compiled, idx)  # sinks are graph inputs: missing -> an error naming the fix
    torch._dynamo.reset()
    prepare(model, idx[:, :-1])
    _lm_loss(compiled, idx).backward()
    got = mon.per_example_sq_norms()
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-12, msg=name)
    assert mon.update().total.batch_size == 6


# --------------------------------------------------------------------------- torch.func


def test_vmap_grad_on_swapped_model_equals_plain_model():
    """``vmap(grad(...))`` through a GNS-transformed model: per-example gradients equal the plain model's."""
    model = swapped_tiny_gpt()
    idx, tgt = batch(4)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, i, t):
        return functional_call(model, p, (i[None], t[None]))[1]

    got = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, idx, tgt)
    want = per_example_grads(model, idx, tgt)  # on an unswapped copy
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)
    # and grad of the batch loss equals loss.backward() on the swapped model
    full = grad(lambda p: functional_call(model, p, (idx, tgt))[1])(params)
    model(idx, tgt)[1].backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(full[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_autograd_functions_under_torch_func(kind):
    """The per-example Functions (setup_context form) under grad and vmap(grad) equal torch's norms."""
    x, w, b = torch.randn(3, 4, 8), torch.randn(8), torch.randn(8)
    if kind == "layernorm":
        ours = lambda x, w: LayerNormPerExampleRef.apply(x, w, b, 1e-5).pow(3).sum()  # noqa: E731
        ref = lambda x, w: F.layer_norm(x, (8,), w, b, 1e-5).pow(3).sum()  # noqa: E731
    else:
        ours = lambda x, w: RMSNormPerExampleRef.apply(x, w, 1e-6).pow(3).sum()  # noqa: E731
        ref = lambda x, w: F.rms_norm(x, (8,), w, 1e-6).pow(3).sum()  # noqa: E731
    for a, r in zip(grad(ours, argnums=(0, 1))(x, w), grad(ref, argnums=(0, 1))(x, w), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
    per = vmap(grad(ours, argnums=1), in_dims=(0, None))(x, w)
    torch.testing.assert_close(per, vmap(grad(ref, argnums=1), in_dims=(0, None))(x, w), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per[0], per[1])  # per-example, not a broadcast of one gradient
