"""Schedules: shapes, exact D2Z end, per-group LR ratios under LambdaLR, state round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxparam import schedules
from fxparam.errors import RecipeError
from fxparam.recipes.schedules import Schedule, lr_values, make_schedule

FAST = settings(max_examples=40, deadline=None)


@st.composite
def any_schedule(draw: st.DrawFn) -> Schedule:
    """A valid schedule of any kind, length, warmup and final fraction."""
    kind = draw(st.sampled_from(schedules.SCHEDULE_NAMES))
    total = draw(st.integers(2, 300))
    warmup = draw(st.integers(0, total - 1))
    decay_factor = draw(st.sampled_from([1.0, 2.0, 10.0, math.inf]))
    if kind == "wsd":
        frac = draw(st.floats(0.01, 1.0))
        cooldown = max(1, round(frac * total))
        warmup = min(warmup, total - cooldown)
        return make_schedule(
            "wsd", total_steps=total, warmup_steps=warmup, decay_fraction=frac, decay_factor=decay_factor
        )
    if kind in ("linear", "cosine"):
        return make_schedule(kind, total_steps=total, warmup_steps=warmup, decay_factor=decay_factor)
    return make_schedule(kind, total_steps=total, warmup_steps=warmup)


@FAST
@given(total=st.integers(2, 2000), data=st.data())
def test_d2z_ends_at_exactly_zero_and_is_monotone_after_warmup(total: int, data: st.DataObject) -> None:
    warmup = data.draw(st.integers(0, total - 1))
    v = lr_values("d2z", total_steps=total, warmup_steps=warmup)
    assert v[-1] == 0.0  # exactly, not approximately
    assert v.max() == 1.0
    assert np.all(np.diff(v[warmup:]) <= 0)
    assert np.all(np.diff(v[:warmup]) > 0)  # warmup rises strictly to the peak
    assert (v[:-1] > 0).all()  # only the last update is at zero
    assert (
        make_schedule("d2z", total_steps=total, warmup_steps=warmup)(total + 5) == 0.0
    )  # holds after the end


@FAST
@given(sched=any_schedule())
def test_every_schedule_peaks_at_one_and_ends_at_its_final_fraction(sched: Schedule) -> None:
    v = sched.values()
    assert v.shape == (sched.total_steps,)
    assert (v >= 0).all() and v.max() <= 1.0 + 1e-12
    if sched.kind != "constant":
        assert v[-1] == sched.final_fraction
    assert [sched(t) for t in range(sched.total_steps)] == v.tolist()  # scalar == vectorised


def test_named_shapes() -> None:
    assert lr_values("linear", total_steps=3, warmup_steps=0).tolist() == [1.0, 0.55, 0.1]
    cos = lr_values("cosine", total_steps=5, warmup_steps=0, decay_factor=math.inf)
    np.testing.assert_allclose(cos, [1.0, 0.8535534, 0.5, 0.1464466, 0.0], atol=1e-7)
    w = lr_values("wsd", total_steps=10, warmup_steps=2, decay_fraction=0.3)
    np.testing.assert_allclose(w, [0.5, 1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3, 0])
    assert lr_values("constant", total_steps=4, warmup_steps=2, peak_lr=3.0).tolist() == [1.5, 3.0, 3.0, 3.0]
    assert make_schedule("d2z", total_steps=1000).warmup_steps == 100  # 10% default warmup


@FAST
@given(
    lrs=st.lists(st.floats(1e-5, 1.0), min_size=1, max_size=4),
    name=st.sampled_from(schedules.SCHEDULE_NAMES),
    steps=st.integers(1, 40),
)
def test_scheduler_keeps_each_group_lr_ratio(lrs: list[float], name: str, steps: int) -> None:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    opt = torch.optim.AdamW(
        [{"params": [p], "lr": lr} for p, lr in zip(params, lrs, strict=True)], weight_decay=0.1
    )
    sched = schedules.scheduler(opt, name, total_steps=40, warmup_steps=4)
    ref = make_schedule(name, total_steps=40, warmup_steps=4)
    for t in range(steps):
        for g, lr in zip(opt.param_groups, lrs, strict=True):
            assert g["lr"] == pytest.approx(lr * ref(t), rel=1e-12, abs=0)
            assert g["initial_lr"] == lr
        opt.step()
        sched.step()


def test_factories_and_state_dict_round_trip() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    for make in (schedules.d2z, schedules.linear_decay, schedules.cosine, schedules.wsd, schedules.constant):
        opt = torch.optim.AdamW([w], lr=1e-3)
        sched = make(opt, total_steps=50)
        for _ in range(7):
            opt.step()
            sched.step()
        state = sched.state_dict()
        opt2 = torch.optim.AdamW([w], lr=1e-3)
        sched2 = make(opt2, total_steps=50)
        sched2.load_state_dict(state)
        assert sched2.last_epoch == 7
        assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_schedule("nope", total_steps=10), "unknown schedule"),
        (lambda: make_schedule("d2z", total_steps=0), "positive integer"),
        (lambda: make_schedule("d2z", total_steps=10, warmup_steps=10), "warmup_steps"),
        (lambda: make_schedule("linear", total_steps=10, decay_factor=0.5), "decay_factor"),
        (lambda: make_schedule("wsd", total_steps=10, warmup_steps=9, decay_fraction=0.5), "overlaps"),
        (lambda: make_schedule("cosine", total_steps=10, decay_fraction=0.5), "only applies to 'wsd'"),
        (lambda: make_schedule("d2z"), "total_steps is required"),
        (lambda: lr_values("d2z", total_steps=10, peak_lr=float("nan")), "peak_lr"),
        (lambda: schedules.d2z(object(), total_steps=10), "torch.optim.Optimizer"),  # type: ignore[arg-type]
    ],
)
def test_bad_schedule_inputs_raise_recipe_error(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=match):
        call()
