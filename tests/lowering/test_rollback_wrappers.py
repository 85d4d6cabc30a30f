"""Wrappers are never damaged; the transformed marker and the plan's fingerprint hold (issue 14, cases 1, 2, 6, 8).

Expected values from first principles: muP's readout multiplier is base_width/width
(Yang et al. 2021, Table 3), so a plan for width 64 at base 32 carries 1/2 where width 128
needs 1/4.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.lowering.verify import verify
from fxparam.models.gpt import GPT, GPTConfig


def _gpt(width: int = 32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(width=width, depth=2, heads=2, vocab=256, seq_len=32))


def _values(model: nn.Module) -> dict[str, Any]:
    return {n: (id(p), p.device.type, p.detach().clone()) for n, p in model.named_parameters()}


def _same_values(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k][:2] == b[k][:2] and torch.equal(a[k][2], b[k][2]) for k in a)


def test_case1_inspect_and_transform_of_a_compiled_module_leave_the_user_objects_whole() -> None:
    model = _gpt()
    compiled = torch.compile(model)
    wrapper_state = dict(compiled.__dict__)
    before = _values(model)
    analysis = fxparam.inspect(compiled)
    assert analysis.depth == fxparam.inspect(model).depth == 2
    assert _same_values(before, _values(model)), "capture moved or changed the user's weights"
    assert compiled.__dict__ == wrapper_state and compiled._orig_mod is model
    assert all(type(m).__module__ != "torch.nn.modules.module" or m is not None for m in model.modules())

    out = fxparam.transform(compiled, "mup", base_width=16, init=False)
    assert out is compiled and compiled._orig_mod is model
    assert fxparam.plan_of(compiled) is fxparam.plan_of(model)
    assert verify(model).ok
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_peft_and_fsdp_wrappers_are_refused_with_the_fix() -> None:
    class PeftLike(nn.Module):  # duck type of peft.PeftModel (peft is not installed here)
        def __init__(self, base: nn.Module) -> None:
            super().__init__()
            self.base_model = base
            self.peft_config = {"default": None}

    model = _gpt()
    before = _values(model)
    with pytest.raises(fxparam.LoweringError, match="get_peft_model"):
        fxparam.transform(PeftLike(model), "mup", base_width=16)

    class FullyShardedDataParallel(nn.Module):  # same class name as torch's FSDP wrapper
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    with pytest.raises(fxparam.LoweringError, match="before fully_shard"):
        fxparam.transform(FullyShardedDataParallel(model), "mup", base_width=16)
    assert _same_values(before, _values(model))


def test_transformed_marker_survives_deleting_the_plan_attribute() -> None:
    model = fxparam.transform(_gpt(), "mup", base_width=16)
    logits_once = model(torch.arange(8)[None])
    del model._fxparam_plan
    with pytest.raises(fxparam.AlreadyTransformedError, match="double-scale"):
        fxparam.transform(model, "mup", base_width=16)
    torch.testing.assert_close(model(torch.arange(8)[None]), logits_once)  # not scaled a second time


def test_case6_a_plan_for_another_width_is_refused() -> None:
    small = fxparam.plan(_gpt(64), "mup", base_width=32)
    assert small.multipliers["input:lm_head"] == pytest.approx(32 / 64)
    wide = _gpt(128)
    before = _values(wide)
    with pytest.raises(fxparam.LoweringError, match=r"width 64.*shape\(s\) differ.*plan \[64, 64\] vs model \[128, 128\]"):
        fxparam.apply_plan(wide, small)
    assert _same_values(before, _values(wide))
    # negative control: the plan built on this model applies, with 32/128 = 1/4 at the readout
    fxparam.apply_plan(wide, fxparam.plan(wide, "mup", base_width=32))
    assert fxparam.plan_of(wide).multipliers["input:lm_head"] == pytest.approx(0.25)
    # JSON keeps the fingerprint
    again = fxparam.Plan.from_json(small.to_json())
    with pytest.raises(fxparam.LoweringError, match="shape"):
        fxparam.apply_plan(_gpt(128), again)


class WithIntTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, 32)
        self.lin = nn.Linear(32, 32)
        self.head = nn.Linear(32, 256)
        self.table = nn.Parameter(torch.arange(16).view(4, 4), requires_grad=False)  # frozen int64 2-D

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin(self.emb(idx)) + self.table.sum())


def test_case2_a_parameter_fxparam_cannot_handle_is_refused_before_any_change() -> None:
    model = WithIntTable()
    idx = torch.randint(0, 256, (2, 8))
    plan = fxparam.plan(model, "mup", base_width=16, example_inputs=(idx,))
    plan.params["table"] = plan.params["table"].model_copy(update={"init": "normal", "init_std": 0.02})
    before = _values(model)
    with pytest.raises(fxparam.LoweringError, match=r"\['table'\].*torch.int64.*floating-point"):
        fxparam.apply_plan(model, plan, init=True, example_inputs=(idx,))
    assert _same_values(before, _values(model))
    assert all(not m._forward_hooks and type(m).__module__.startswith("torch") for m in model.modules()
               if m is not model)


def test_ddp_with_reinit_is_refused_and_init_false_goes_through(tmp_path: Any) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = _gpt()
        ddp = DistributedDataParallel(model)
        before = _values(model)
        with pytest.raises(fxparam.LoweringError, match="DistributedDataParallel.*init=False"):
            fxparam.transform(ddp, "mup", base_width=16)
        assert _same_values(before, _values(model))
        reference = fxparam.transform(copy.deepcopy(model), "mup", base_width=16, init=False)
        assert fxparam.transform(ddp, "mup", base_width=16, init=False) is ddp
        idx = torch.randint(0, 256, (2, 8))
        torch.testing.assert_close(ddp(idx), reference(idx))
    finally:
        dist.destroy_process_group()


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.ln(x))


class AliasedLinear(nn.Module):
    """One Linear registered under two names (``blocks.0.fc`` and ``alias``)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, 32)
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.alias = self.blocks[0].fc
        self.head = nn.Linear(32, 256)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_case2_a_failure_after_mutation_restores_the_model_and_a_retry_scales_once() -> None:
    torch.manual_seed(0)
    model = AliasedLinear()
    idx = torch.randint(0, 256, (2, 8))
    before = _values(model)
    hooks_before = {n: (type(m), len(m._forward_hooks), len(m._forward_pre_hooks), sorted(m._buffers))
                    for n, m in model.named_modules(remove_duplicate=False)}
    # stored masks on a module with two names change the state_dict keys: found after the masks went in
    with pytest.raises(fxparam.LoweringError, match="alias.weight_mask"):
        fxparam.transform(model, "mup+supar", base_width=16, density=0.5, store_masks=True, example_inputs=(idx,))
    assert _same_values(before, _values(model))
    assert hooks_before == {n: (type(m), len(m._forward_hooks), len(m._forward_pre_hooks), sorted(m._buffers))
                            for n, m in model.named_modules(remove_duplicate=False)}
    with pytest.raises(fxparam.LoweringError, match="not transformed"):
        fxparam.plan_of(model)
    # the retry realizes the planned readout factor base_width/width = 1/2 once (not 1/4)
    fxparam.transform(model, "mup+supar", base_width=16, density=0.5, example_inputs=(idx,))
    report = verify(model, example_inputs=(idx,))
    head = [c for c in report.checks if c.site == "input:head" and c.how == "probe"]
    assert report.ok and head and head[0].realized == pytest.approx(0.5, rel=1e-5)


def test_compile_of_a_compiled_module_and_instance_patched_forwards_are_refused_before_any_change() -> None:
    """torch.compile(torch.compile(m)) is a function, not a module; accelerate's prepare(mixed_precision=...)
    and add_hook_to_module put a forward on the instance, bound to the class it replaced - a ScaledLinear
    class swap under it would never run (the multiplier silently lost).  Both are refused, naming the fix,
    and the user's model is unchanged."""
    model = _gpt()
    before = _values(model)
    compiled_twice = torch.compile(torch.compile(model))
    assert not isinstance(compiled_twice, nn.Module)
    with pytest.raises(fxparam.LoweringError, match=r"needs an nn\.Module.*wraps the GPT module's forward.*compile it once"):
        fxparam.transform(compiled_twice, "mup", base_width=16)
    plain_forward = nn.Linear.forward
    for module in (model.lm_head, model.blocks[1].mlp.proj):
        module.forward = plain_forward.__get__(module)  # what accelerate.hooks.add_hook_to_module does
    with pytest.raises(fxparam.LoweringError, match=r"forward patched on the instance \(blocks\.1\.mlp\.proj, lm_head\)"
                                                   r".*Transform the plain model first"):
        fxparam.transform(model, "completep", base_width=16, base_depth=1)
    assert not hasattr(model, "_fxparam_plan") and type(model.lm_head) is nn.Linear
    after = _values(model)
    assert all(after[n][0] == before[n][0] and torch.equal(after[n][2], before[n][2]) for n in before)
    for module in (model.lm_head, model.blocks[1].mlp.proj):
        del module.forward
    fxparam.transform(model, "completep", base_width=16, base_depth=1)  # control: the unpatched model goes through
    assert verify(model).ok


def test_verify_fold_and_save_name_a_deleted_plan_instead_of_calling_the_model_untransformed(tmp_path: Any) -> None:
    """After ``del model._fxparam_plan`` the readout is still scaled by base_width/width = 1/2 (muP Table 3):
    "not transformed" would be false.  verify / fold / save say what happened; re-attaching the plan
    (built for this model and config) makes verify pass again; a graph lowering's GraphModule is
    refused by fold with the eager route."""
    from fxparam.plan import attach

    model = fxparam.transform(_gpt(), "mup", base_width=16)
    the_plan = fxparam.plan_of(model)
    del model._fxparam_plan
    for call in (lambda: verify(model), lambda: fxparam.fold(model),
                 lambda: fxparam.save(model, tmp_path / "x.safetensors")):
        with pytest.raises(fxparam.LoweringError, match=r"is transformed .*lm_head.*plan is gone.*attach"):
            call()
    assert not (tmp_path / "x.safetensors").exists()
    attach(model, the_plan)
    assert verify(model).ok
    idx = torch.zeros(2, 8, dtype=torch.long)
    gm = fxparam.transform(_gpt(), "mup", base_width=16, lowering="graph", example_inputs=idx)
    with pytest.raises(fxparam.LoweringError, match=r"GraphModule.*apply_plan"):
        fxparam.fold(gm, example_inputs=idx)
