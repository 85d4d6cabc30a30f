"""GNSMonitor on the reference GPT against brute-force per-example gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _gns_helpers import batch, brute_force_estimates, per_example_grads, swapped_tiny_gpt, tiny_gpt

from fxparam.errors import GNSError
from fxparam.gns import GNSEstimate, monitor, ratio

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@pytest.mark.parametrize("norm,bias", [("layernorm", True), ("layernorm", False), ("rmsnorm", False)])
def test_per_example_norms_and_estimates_match_bruteforce(norm, bias):
    model = swapped_tiny_gpt(norm, bias)
    mon = monitor(model)
    idx, tgt = batch(6)
    model(idx, tgt)[1].backward()
    per = per_example_grads(model, idx, tgt)

    got = mon.per_example_sq_norms()
    assert sorted(got) == sorted(mon.tracked_parameters)
    assert all(("ln" in n) for n in got) and (any(n.endswith(".bias") for n in got) == bias)
    for name, sq in got.items():
        torch.testing.assert_close(sq, per[name].flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-10, msg=name)

    est = mon.update()
    assert isinstance(est, GNSEstimate) and est.last_step_ok and est.good_steps == 1
    g2, tr, s_small, s_big = brute_force_estimates(per, mon.tracked_parameters)
    assert est.total.batch_size == 6
    assert math.isclose(est.total.s_small, s_small, rel_tol=1e-4)
    assert math.isclose(est.total.s_big, s_big, rel_tol=1e-4)
    assert math.isclose(est.total.g2_raw, g2, rel_tol=1e-3, abs_tol=1e-3 * s_big)
    assert math.isclose(est.total.trace_sigma_raw, tr, rel_tol=1e-4)
    # After one update, the bias-corrected EMA equals the raw estimate.
    assert math.isclose(est.total.g2, est.total.g2_raw, rel_tol=1e-9)
    assert est.total.b_simple == ratio(est.total.trace_sigma_raw, est.total.g2_raw)  # inf when g2 < 0
    # Per layer, then total = sum of layers.
    assert sorted(est.layers) == sorted(mon.tracked_modules)
    for layer, st in est.layers.items():
        names = [n for n in mon.tracked_parameters if n.rsplit(".", 1)[0] == layer]
        lg2, ltr, _, _ = brute_force_estimates(per, names)
        assert math.isclose(st.trace_sigma_raw, ltr, rel_tol=1e-4), layer
    assert math.isclose(
        sum(s.trace_sigma_raw for s in est.layers.values()), est.total.trace_sigma_raw, rel_tol=1e-9
    )
    # Buffers are reset by update().
    assert mon.per_example_sq_norms() == {}


def _step_estimate(model, mon, idx, tgt, micro: int, reduction: str = "mean"):
    chunks = list(zip(idx.chunk(micro), tgt.chunk(micro), strict=True))
    for i, t in chunks:
        logits = model(i)
        per_tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), t.reshape(-1), reduction="none")
        per_ex = per_tok.view(i.shape).mean(1)
        loss = per_ex.mean() / micro if reduction == "mean" else per_ex.sum()
        loss.backward()
    est = mon.update()
    model.zero_grad()
    return est


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_gradient_accumulation_matches_one_big_batch(norm):
    idx, tgt = batch(8)
    ests = []
    for micro in (1, 2, 4):
        model = swapped_tiny_gpt(norm)
        ests.append(_step_estimate(model, monitor(model), idx, tgt, micro))
    for e in ests[1:]:
        assert e.total.batch_size == 8
        for k in ("s_small", "s_big", "g2_raw", "trace_sigma_raw"):
            assert math.isclose(getattr(e.total, k), getattr(ests[0].total, k), rel_tol=1e-4, abs_tol=1e-9), k


def test_sum_reduction_gives_same_noise_scale():
    idx, tgt = batch(8)
    m1, m2 = swapped_tiny_gpt(), swapped_tiny_gpt()
    e_mean = _step_estimate(m1, monitor(m1), idx, tgt, 2, "mean")
    e_sum = _step_estimate(m2, monitor(m2, loss_reduction="sum"), idx, tgt, 2, "sum")
    # G_b is the gradient of example b's own loss under both conventions.
    for k in ("s_small", "s_big", "trace_sigma_raw", "b_simple_raw"):
        assert math.isclose(getattr(e_sum.total, k), getattr(e_mean.total, k), rel_tol=1e-4), k


def test_loss_scale_is_undone():
    idx, tgt = batch(6)
    m1, m2 = swapped_tiny_gpt(), swapped_tiny_gpt()
    mon1, mon2 = monitor(m1), monitor(m2)
    m1(idx, tgt)[1].backward()
    (m2(idx, tgt)[1] * 1024.0).backward()
    for p in m2.parameters():  # what GradScaler.unscale_ does
        p.grad.div_(1024.0)
    e1, e2 = mon1.update(), mon2.update(loss_scale=1024.0)
    assert math.isclose(e1.total.trace_sigma_raw, e2.total.trace_sigma_raw, rel_tol=1e-5)
    assert math.isclose(e1.total.g2_raw, e2.total.g2_raw, rel_tol=1e-4, abs_tol=1e-6 * e1.total.s_big)


def test_non_finite_step_is_skipped_and_counted():
    model = swapped_tiny_gpt()
    mon = monitor(model, alpha=0.9)
    idx, tgt = batch(4)
    model(idx, tgt)[1].backward()
    good = mon.update()
    model.zero_grad()
    model(idx, tgt)[1].backward()
    model.ln_f.weight.grad[0] = float("nan")
    bad = mon.update()
    assert not bad.last_step_ok and bad.bad_steps == 1 and bad.good_steps == 1 and mon.bad_steps == 1
    assert math.isnan(bad.total.g2_raw)
    assert bad.total.g2 == good.total.g2 and bad.total.trace_sigma == good.total.trace_sigma  # EMA untouched
    model.zero_grad()
    (model(idx, tgt)[1] * float("inf")).backward()  # inf in the per-example buffers too
    assert not mon.update().last_step_ok and mon.bad_steps == 2
    model.zero_grad()
    model(idx, tgt)[1].backward()
    after = mon.update()
    assert after.last_step_ok and math.isfinite(after.total.g2) and math.isfinite(after.total.trace_sigma)
    assert after.good_steps == 2


def test_ema_smoothing():
    model = swapped_tiny_gpt()
    mon = monitor(model, alpha=0.5)
    raws = []
    for seed in (1, 2, 3):
        idx, tgt = batch(4, seed=seed)
        model(idx, tgt)[1].backward()
        raws.append(mon.update().total.trace_sigma_raw)
        model.zero_grad()
    w = [0.25 * 0.5, 0.5 * 0.5, 0.5]  # debiased EMA weights (1-a) a^k / (1 - a^3)
    want = sum(wi * r for wi, r in zip(w, raws, strict=True)) / (1 - 0.5**3)
    assert math.isclose(mon.estimate().total.trace_sigma, want, rel_tol=1e-9)


def test_logging_dict_and_tensorboard_writer():
    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, global_step=None):
            self.calls.append((tag, value, global_step))

    model = swapped_tiny_gpt()
    w = Writer()
    mon = monitor(model, tensorboard_writer=w)
    assert mon.as_dict() == {}
    idx, tgt = batch(4)
    model(idx, tgt)[1].backward()
    mon.update(step=7)
    d = mon.as_dict()
    assert all(isinstance(v, float) for v in d.values())
    assert "gns/b_simple" in d and "gns/blocks.0.ln_1/b_simple" in d
    tags = {t for t, _, _ in w.calls}
    assert "gns/b_simple" in tags and not any("blocks" in t for t in tags)  # totals only by default
    assert all(s == 7 for _, _, s in w.calls)


def test_state_dict_roundtrip():
    model = swapped_tiny_gpt()
    mon = monitor(model)
    idx, tgt = batch(4)
    model(idx, tgt)[1].backward()
    mon.update()
    state = mon.state_dict()
    for _ in range(2):  # the same second step, seen by the original and by a restored monitor
        model.zero_grad()
        idx2, tgt2 = batch(4, seed=5)
        model(idx2, tgt2)[1].backward()
        if _ == 0:
            e1 = mon.update()
        else:
            mon2 = monitor(model)
            mon2.load_state_dict(state)
            e2 = mon2.update()
    assert e1 == e2 and e2.step == 2


def test_errors_name_the_fix():
    with pytest.raises(GNSError, match="swap_norms"):
        monitor(tiny_gpt())
    model = swapped_tiny_gpt()
    mon = monitor(model)
    with pytest.raises(GNSError, match="no update yet"):
        mon.estimate()
    with pytest.raises(GNSError, match="no per-example norms"):
        mon.update()
    idx, tgt = batch(1)
    model(idx, tgt)[1].backward()
    with pytest.raises(GNSError, match="at least 2 examples"):
        mon.update()
    idx, tgt = batch(3)
    model(idx, tgt)[1].backward()
    model.zero_grad(set_to_none=True)
    with pytest.raises(GNSError, match="before optimizer.zero_grad"):
        mon.update()
    with pytest.raises(GNSError, match="loss_reduction"):
        monitor(model, loss_reduction="max")  # type: ignore[arg-type]


def test_frozen_norm_parameters_are_not_tracked():
    model = swapped_tiny_gpt()
    model.ln_f.weight.requires_grad_(False)
    mon = monitor(model)
    assert "ln_f.weight" not in mon.tracked_parameters and "ln_f.bias" in mon.tracked_parameters
    idx, tgt = batch(4)
    model(idx, tgt)[1].backward()
    assert mon.update().last_step_ok
