"""Issue 16 cases 4-5: schedulers keep the plan's per-group LR ratios; resuming a different D2Z schedule.

Expected ratios come from the muP table (hidden LR eta/m_d, embedding eta: ratio 1/m_d), written by hand.
"""

from __future__ import annotations

import copy
import datetime
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
from torch.optim import lr_scheduler

import fxparam
import fxparam.schedulers as fxs
from fxparam.models import GPT, GPTConfig
from fxparam.optim import PlanLRWarning
from fxparam.recipes import schedules

M_D = 4  # width 64 / base 16


def _model() -> torch.nn.Module:
    return fxparam.transform(GPT(GPTConfig(width=64, depth=2, head_dim=16)), "mup", base_width=16)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _model()


def _lr_of(opt: torch.optim.Optimizer, fqn: str) -> float:
    return next(float(g["lr"]) for g in opt.param_groups if fqn in g["param_names"])


def _steps(opt: torch.optim.Optimizer, sched, n: int) -> None:
    """Optimizer + scheduler steps (no gradients needed: the check is a step pre-hook on the LRs)."""
    for _ in range(n):
        opt.step()
        sched.step()


def test_plain_one_cycle_collapses_the_groups_and_warns_at_the_first_step(model: torch.nn.Module) -> None:
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=20)
    assert _lr_of(opt, "blocks.0.attn.qkv.weight") == _lr_of(opt, "wte.weight")  # the bug the check catches
    with pytest.warns(PlanLRWarning, match="ratios"):
        _steps(opt, sched, 1)


def test_one_cycle_adapter_keeps_the_ratios_for_10_steps(model: torch.nn.Module) -> None:
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2)
    sched = fxs.one_cycle(opt, max_lr=1e-2, total_steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanLRWarning)
        _steps(opt, sched, 10)
    hidden, emb = _lr_of(opt, "blocks.0.attn.qkv.weight"), _lr_of(opt, "wte.weight")
    assert hidden > 0 and hidden / emb == pytest.approx(1 / M_D)
    assert _lr_of(opt, "blocks.1.mlp.fc.bias") / emb == pytest.approx(1.0)
    assert fxs.ratios_kept(opt)


def test_cyclic_adapter_and_refused_absolute_floor(model: torch.nn.Module) -> None:
    opt = fxparam.optimizer(model, torch.optim.SGD, lr=1e-2, momentum=0.9)
    sched = fxs.cyclic(opt, base_lr=1e-4, max_lr=1e-2, step_size_up=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanLRWarning)
        _steps(opt, sched, 4)
    assert fxs.ratios_kept(opt)
    with pytest.raises(fxparam.OptimizerError, match="eta_min"):
        fxs.adapt(lr_scheduler.CosineAnnealingLR, opt, T_max=10, eta_min=1e-5)
    with pytest.raises(fxparam.OptimizerError, match="fxparam_lr_mult"):
        fxs.one_cycle(torch.optim.AdamW(model.parameters(), lr=1e-3), max_lr=1e-2, total_steps=5)


def test_relative_schedulers_keep_the_ratios_and_an_absolute_floor_warns(model: torch.nn.Module) -> None:
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2)
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanLRWarning)
        _steps(opt, sched, 5)
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=1e-3)
    with pytest.warns(PlanLRWarning):
        _steps(opt, sched, 3)


# ---------------------------------------------------------------- the plain-optimizer check, keyed by FQN


def _warns_sp(model: torch.nn.Module, named: bool = False) -> bool:
    opt = torch.optim.AdamW(model.named_parameters() if named else model.parameters(), lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    return any("standard parameterization" in str(w.message) for w in caught)


def test_plain_optimizer_check_survives_assign_load_and_deepcopy(model: torch.nn.Module) -> None:
    assert _warns_sp(model)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    assert _warns_sp(model)
    assert _warns_sp(copy.deepcopy(model))
    assert _warns_sp(copy.deepcopy(model), named=True)
    assert not _warns_sp(GPT(GPTConfig(width=64, depth=2, head_dim=16)))  # control: an untransformed model


def test_plain_optimizer_check_survives_fsdp2_fully_shard() -> None:
    fully_shard = pytest.importorskip("torch.distributed.fsdp").fully_shard
    if not (dist.is_available() and dist.is_gloo_available()) or dist.is_initialized():
        pytest.skip("needs gloo and no process group in this process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = _model()
        before = {id(p) for p in model.parameters()}
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        assert not before & {id(p) for p in model.parameters()}  # new Parameter objects
        assert _warns_sp(model)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- case 5: resuming a different D2Z schedule


def _sched_after(t: int, total: int) -> dict:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = schedules.d2z(opt, total_steps=total, warmup_steps=0)
    for _ in range(t):
        opt.step()
        sched.step()
    return sched.state_dict()


def test_resume_with_a_longer_d2z_raises_by_default_and_the_plain_lambdalr_bug() -> None:
    state = _sched_after(100, total=100)  # finished: LR 0
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    with pytest.raises(fxparam.RecipeError, match="on_resize"):
        schedules.d2z(opt, total_steps=200, warmup_steps=0).load_state_dict(state)
    # control: a plain LambdaLR over the same Schedule silently keeps the old total -> LR 0 for good
    plain = lr_scheduler.LambdaLR(opt, lr_lambda=schedules.make_schedule("d2z", total_steps=200, warmup_steps=0))
    plain.load_state_dict(state)
    plain.step()
    assert opt.param_groups[0]["lr"] == 0.0


@pytest.mark.parametrize(("mode", "t_new"), [("rescale", 100), ("continue", 50)])
def test_resume_with_a_longer_d2z_rescales_or_continues(mode: str, t_new: int) -> None:
    state = _sched_after(50, total=100)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = schedules.d2z(opt, total_steps=200, warmup_steps=0, on_resize=mode)
    sched.load_state_dict(state)
    assert sched.last_epoch == t_new
    # D2Z without warmup over T updates: m(t) = 1 - t/(T-1)  (hp_laws.md, by hand)
    assert opt.param_groups[0]["lr"] == pytest.approx(1 - t_new / 199)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1 - (t_new + 1) / 199)


def test_resume_with_the_same_schedule_is_a_plain_load() -> None:
    state = _sched_after(30, total=100)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = schedules.d2z(opt, total_steps=100, warmup_steps=0)
    sched.load_state_dict(state)
    assert sched.last_epoch == 30


def test_continue_past_the_end_of_a_shorter_schedule_is_refused_rescale_is_not() -> None:
    """A checkpoint at update 50 resumed with on_resize='continue' into a 40-update D2Z would train on at LR 0."""
    state = _sched_after(50, total=100)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    with pytest.raises(fxparam.RecipeError, match="past the end"):
        schedules.d2z(opt, total_steps=40, warmup_steps=0, on_resize="continue").load_state_dict(state)
    sched = schedules.d2z(opt, total_steps=40, warmup_steps=0, on_resize="rescale")
    sched.load_state_dict(state)
    assert sched.last_epoch == 20  # round(50 * 40 / 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1 - 20 / 39)  # D2Z m(t) = 1 - t/(T-1), by hand


def test_swalr_collapses_the_groups_and_adapt_expands_swa_lr(model: torch.nn.Module) -> None:
    from torch.optim.swa_utils import SWALR

    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2)
    sched = SWALR(opt, swa_lr=1e-3, anneal_epochs=2)
    with pytest.warns(PlanLRWarning):
        _steps(opt, sched, 3)  # control: every group annealed to the one absolute swa_lr
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2)
    sched = fxs.adapt(SWALR, opt, swa_lr=1e-3, anneal_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanLRWarning)
        _steps(opt, sched, 3)
    # annealed: each group at swa_lr times its muP multiplier (hidden 1/m_d, embedding 1), by hand
    assert _lr_of(opt, "blocks.0.attn.qkv.weight") == pytest.approx(1e-3 / M_D)
    assert _lr_of(opt, "wte.weight") == pytest.approx(1e-3)


def test_transformed_model_swaps_tensors_on_conversion() -> None:
    """fxparam keeps no weakref on a Parameter (torch.utils.swap_tensors refuses such tensors), so
    model.half() and load_state_dict work under swap_module_params_on_conversion, as for the plain model,
    and the SP-by-accident check still knows the swapped Parameters' planned LR multipliers."""
    import torch.__future__ as future

    from fxparam.models import GPT, GPTConfig
    from fxparam.plan import planned_lr_mult

    before = future.get_swap_module_params_on_conversion()
    future.set_swap_module_params_on_conversion(True)
    try:
        model = fxparam.transform(GPT(GPTConfig(width=64, depth=2)), "mup", base_width=32)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.half()
        assert next(model.parameters()).dtype == torch.float16
        model.float()
        model.load_state_dict(state)
        hidden = model.blocks[0].attn.qkv.weight if hasattr(model.blocks[0].attn, "qkv") else None
        if hidden is not None:
            assert planned_lr_mult(hidden) == pytest.approx(32 / 64)  # muP hidden Adam LR eta / m_d, m_d = 2
    finally:
        future.set_swap_module_params_on_conversion(before)
