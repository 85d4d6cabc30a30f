"""Bad plans fail with LoweringError naming the FQN, before the model is touched."""

from __future__ import annotations

import pytest
import torch
from conftest import HIDDEN, TINY

import fxparam
from fxparam.lowering.eager import PLAN_ATTR
from fxparam.models import GPT
from fxparam.passes import build_plan
from fxparam.plan import MaskPlan

SUPAR = fxparam.compose(fxparam.MuP(base_width=32), fxparam.SuPar(density=0.5))


def _snapshot(model: torch.nn.Module) -> tuple:
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return hooks, list(dict(model.named_buffers())), state, [p._backward_hooks for p in model.parameters()]


def _unchanged(model: torch.nn.Module, before: tuple) -> None:
    after = _snapshot(model)
    assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3]
    assert all(torch.equal(a, b) for a, b in zip(after[2].values(), before[2].values(), strict=True))
    assert getattr(model, PLAN_ATTR, None) is None


def _edit(plan, fqn, mask=None, param_plan=None):
    plan = plan.model_copy(deep=True)
    if mask is not None:
        plan.masks[fqn] = mask
    if param_plan is not None:
        plan.params[fqn] = param_plan
    return plan


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (
            lambda p: _edit(p, "blocks.7.mlp.fc.weight", MaskPlan(density=0.5, seed=0)),
            "'blocks.7.mlp.fc.weight'",
        ),
        (lambda p: _edit(p, "blocks.0.mlp.fc", MaskPlan(density=0.5, seed=0)), "'blocks.0.mlp.fc'"),
        (lambda p: _edit(p, HIDDEN[1], MaskPlan(density=0.0, seed=0)), f"'{HIDDEN[1]}' with density 0.0"),
        (lambda p: _edit(p, HIDDEN[1], MaskPlan(density=1.5, seed=0)), f"'{HIDDEN[1]}' with density 1.5"),
    ],
    ids=["missing", "module-not-param", "density-0", "density-1.5"],
)
def test_bad_mask_plans_name_the_fqn_and_leave_the_model_alone(tiny_analysis, edit, fragment):
    plan = edit(build_plan(tiny_analysis, SUPAR))
    model = GPT(TINY)
    before = _snapshot(model)
    with pytest.raises(fxparam.LoweringError, match=fragment):
        fxparam.apply_plan(model, plan, init=True)
    _unchanged(model, before)


def test_mask_on_a_tied_alias_is_refused():
    model = GPT(TINY.replace(tie_embeddings=True))
    plan = fxparam.plan(model, "mup+supar", base_width=32, density=0.5)
    plan.masks["lm_head.weight"] = MaskPlan(density=0.5, seed=0)
    before = _snapshot(model)
    with pytest.raises(fxparam.LoweringError, match="'lm_head.weight', an alias of 'wte.weight'"):
        fxparam.apply_plan(model, plan)
    _unchanged(model, before)


def test_incompatible_parameters_are_refused(tiny_analysis):
    plan = build_plan(tiny_analysis, SUPAR)
    model = GPT(TINY)
    model.blocks[0].mlp.fc.register_buffer("weight_mask", torch.ones(1))  # e.g. torch.nn.utils.prune
    before = _snapshot(model)
    with pytest.raises(
        fxparam.LoweringError, match="'blocks.0.mlp.fc.weight'.*already has an attribute 'weight_mask'"
    ):
        fxparam.apply_plan(model, plan)
    _unchanged(model, before)

    meta = GPT(TINY).to("meta")
    with pytest.raises(fxparam.LoweringError, match="'blocks.0.attn.qkv.weight': it is on the meta device"):
        fxparam.apply_plan(meta, plan)


def test_transforming_twice_is_refused(make_tiny):
    model = make_tiny(SUPAR)
    with pytest.raises(fxparam.AlreadyTransformedError):
        fxparam.transform(model, SUPAR)


def test_string_config_errors_name_the_field():
    with pytest.raises(fxparam.ConfigError, match="density"):
        fxparam.transform(GPT(TINY), "mup+supar", base_width=32, density=1.5)
    with pytest.raises(fxparam.ConfigError, match="density is required"):
        fxparam.transform(GPT(TINY), "mup+supar", base_width=32)
