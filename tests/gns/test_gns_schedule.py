"""BatchSizeSchedule: preset token ramp, online GNS-driven schedule, weight decay ∝ batch size."""

from __future__ import annotations

import math

import pytest
import torch
from _gns_helpers import batch, swapped_tiny_gpt

from fxparam.errors import RecipeError
from fxparam.gns import PAPER_111M_TOTAL_TOKENS, BatchSizeSchedule, GNSEstimate, GNSStats, monitor


def _est(b_simple: float, good: int) -> GNSEstimate:
    st = GNSStats(
        g2=1.0,
        trace_sigma=b_simple,
        b_simple=b_simple,
        g2_raw=1.0,
        trace_sigma_raw=b_simple,
        b_simple_raw=b_simple,
        s_small=0.0,
        s_big=0.0,
        batch_size=8,
    )
    return GNSEstimate(step=good, good_steps=good, bad_steps=0, last_step_ok=True, total=st)


def test_paper_ramp_matches_reference_code():
    """nanoGNS: accumulation steps interpolated linearly in tokens from 2 to 15 (micro-batch 8), then ceil."""
    s = BatchSizeSchedule.paper_111m()
    assert (s.batch_size, s.accumulation_steps, s.max_batch_size) == (16, 2, 120)
    seen = []
    per_step = PAPER_111M_TOTAL_TOKENS // 100
    for _ in range(110):
        seen.append(s.step(tokens=per_step))
        frac = min(1.0, s.tokens_seen / PAPER_111M_TOTAL_TOKENS)
        assert s.accumulation_steps == math.ceil(2 + 13 * frac - 1e-9)
    assert seen == sorted(seen) and seen[-1] == 120 and min(seen) >= 16


def test_ramp_quantised_to_ranks_and_micro_batches():
    s = BatchSizeSchedule.token_ramp(
        micro_batch_size=4, start_batch_size=8, end_batch_size=64, ramp_tokens=1000, world_size=2
    )
    for _ in range(20):
        b = s.step(tokens=73)
        assert b % 8 == 0 and 8 <= b <= 64
        assert s.accumulation_steps * 4 * 2 == b
    assert s.batch_size == 64


def test_online_bounded_monotone_with_warmup():
    s = BatchSizeSchedule.online(
        micro_batch_size=4, min_batch_size=8, max_batch_size=64, fraction=0.5, warmup_steps=3
    )
    assert s.step(estimate=_est(100.0, good=1)) == 8  # still warming up
    assert s.step(estimate=_est(30.0, good=3)) == 16  # 0.5 * 30 = 15 -> next multiple of 4
    assert s.step(estimate=_est(10.0, good=4)) == 16  # never decreases
    assert s.step(estimate=_est(float("inf"), good=5)) == 16  # non-finite ignored
    assert s.step(estimate=_est(float("nan"), good=6)) == 16
    assert s.step(estimate=_est(-3.0, good=7)) == 16
    assert s.step(estimate=_est(1e6, good=8)) == 64  # capped
    assert s.accumulation_steps == 16


def test_weight_decay_scales_with_batch_size():
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(
        [{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias], "weight_decay": 0.0}]
    )
    s = BatchSizeSchedule.online(micro_batch_size=2, min_batch_size=4, max_batch_size=32, warmup_steps=0)
    s.apply_weight_decay(opt)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    s.step(estimate=16.0)
    s.apply_weight_decay(opt)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.4)  # B 4 -> 16: lambda x4
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert s.weight_decay(0.1) == pytest.approx(0.4)
    # Timescale tau = B / (eta * lambda * D) is unchanged.
    assert 16 / (0.4) == pytest.approx(4 / 0.1)


def test_state_dict_roundtrip():
    s = BatchSizeSchedule.online(micro_batch_size=2, min_batch_size=4, max_batch_size=32, warmup_steps=0)
    s.step(tokens=10, estimate=11.0)
    t = BatchSizeSchedule.online(micro_batch_size=2, min_batch_size=4, max_batch_size=32, warmup_steps=0)
    t.load_state_dict(s.state_dict())
    assert (t.batch_size, t.tokens_seen, t.steps) == (12, 10, 1)


def test_bad_configs_name_the_fix():
    with pytest.raises(RecipeError, match="multiple of micro_batch_size"):
        BatchSizeSchedule.online(micro_batch_size=4, min_batch_size=6, max_batch_size=64)
    with pytest.raises(RecipeError, match="min_batch_size <= max_batch_size"):
        BatchSizeSchedule.online(micro_batch_size=4, min_batch_size=64, max_batch_size=8)
    with pytest.raises(RecipeError, match="ramp_tokens"):
        BatchSizeSchedule.token_ramp(micro_batch_size=4, start_batch_size=8, end_batch_size=16, ramp_tokens=0)
    with pytest.raises(RecipeError, match="non-decreasing"):
        BatchSizeSchedule(
            kind="ramp", micro_batch_size=1, min_batch_size=1, max_batch_size=8, points=[(0, 8), (10, 4)]
        )


def test_plain_training_loop_with_monitor_and_online_schedule():
    model = swapped_tiny_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    mon = monitor(model)
    sched = BatchSizeSchedule.online(micro_batch_size=2, min_batch_size=4, max_batch_size=16, warmup_steps=1)
    seen = []
    for step in range(4):
        k = sched.accumulation_steps
        idx, tgt = batch(sched.batch_size, seed=step)
        for i, t in zip(idx.chunk(k), tgt.chunk(k), strict=True):
            (model(i, t)[1] / k).backward()
        est = mon.update()
        assert est.total.batch_size == sched.batch_size  # the monitor saw every micro-batch
        sched.apply_weight_decay(opt)
        opt.step()
        opt.zero_grad()
        seen.append(sched.batch_size)
        sched.step(tokens=sched.batch_size * idx.shape[1], estimate=est)
    assert seen == sorted(seen) and all(4 <= b <= 16 and b % 2 == 0 for b in seen)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1 * seen[-1] / 4)


@pytest.mark.parametrize(("micro", "world", "k0"), [(8, 1, 2), (4, 1, 4), (4, 2, 2), (2, 4, 2)])
def test_paper_ramp_is_16_to_120_sequences_for_any_split(micro, world, k0):
    """Gray et al.: 16 -> 120 sequences per step (global); the split into micro-batches and ranks does not
    change it (micro_batch_size=4 gave 8 -> 60 before)."""
    s = BatchSizeSchedule.paper_111m(micro_batch_size=micro, world_size=world)
    assert (s.batch_size, s.accumulation_steps, s.max_batch_size) == (16, k0, 120)
    s.step(tokens=PAPER_111M_TOTAL_TOKENS // 2)  # half way: 16 + 52 = 68, rounded up to a whole step
    q = micro * world
    assert s.batch_size == math.ceil(68 / q) * q
    s.step(tokens=PAPER_111M_TOTAL_TOKENS)
    assert s.batch_size == 120


def test_paper_ramp_refuses_a_split_that_cannot_make_120():
    with pytest.raises(RecipeError, match="multiple"):
        BatchSizeSchedule.paper_111m(micro_batch_size=16)
