"""The graph lowering: a GraphModule with explicit multiplier nodes, its names, its limits."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from _lowering_cases import COMPLETEP, gpt_case

import fxparam
from fxparam.errors import AlreadyTransformedError, LoweringError
from fxparam.lowering.eager import lower_eager
from fxparam.lowering.graph import apply_plan_to_graph, lower_graph, multiplier_nodes
from fxparam.plan import ParamPlan, Plan

CASE = gpt_case("gelu-learned")


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Plan, torch.Tensor]:
    torch.manual_seed(0)
    base = CASE.make()
    plan = fxparam.plan(base, "completep", **COMPLETEP)
    return base, plan, torch.randint(0, 256, (2, 16))


@pytest.fixture(scope="module")
def gm(setup: tuple[nn.Module, Plan, torch.Tensor]) -> fx.GraphModule:
    base, plan, idx = setup
    return lower_graph(copy.deepcopy(base), plan, init=False, example_inputs=idx)


def test_transform_with_graph_lowering_returns_a_graphmodule(setup: tuple[nn.Module, Plan, torch.Tensor]) -> None:
    base, _plan, idx = setup
    model = copy.deepcopy(base)
    gm = fxparam.transform(model, "completep", lowering="graph", example_inputs=idx, init=False, **COMPLETEP)
    assert isinstance(gm, fx.GraphModule)
    assert fxparam.plan_of(gm).fingerprint() == fxparam.plan(base, "completep", **COMPLETEP).fingerprint()
    assert getattr(model, "_fxparam_plan", None) is None  # the model itself gets no hooks and no plan
    assert not model._forward_hooks and not model.blocks[0].attn.proj._forward_hooks


def test_multipliers_are_explicit_nodes(gm: fx.GraphModule, setup: tuple[nn.Module, Plan, torch.Tensor]) -> None:
    _base, plan, _idx = setup
    factors = sorted(f for _n, f in multiplier_nodes(gm))
    assert factors == sorted([*plan.output_multipliers.values(), *plan.input_multipliers.values()])  # one per call
    for node in gm.graph.nodes:
        if "fxparam" in node.meta:
            assert node.target is torch.ops.aten.mul.Tensor
    scales = [n.kwargs["scale"] for n in gm.graph.nodes if n.target is torch.ops.aten.scaled_dot_product_attention.default]
    assert scales == [site.scale for site in plan.attention.values()]
    assert all(s != site.previous for s, site in zip(scales, plan.attention.values(), strict=True))
    assert "fxparam_mul" in gm.code


def test_names_state_dict_and_optimizer_line_up(gm: fx.GraphModule, setup: tuple[nn.Module, Plan, torch.Tensor]) -> None:
    base, plan, _idx = setup
    assert [n for n, _ in gm.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert set(plan.params) == {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    assert list(gm.state_dict()) == list(base.state_dict())
    eager = lower_eager(copy.deepcopy(base), plan, init=False)
    groups = fxparam.param_groups(gm, lr=1e-2, weight_decay=0.1)
    want = fxparam.param_groups(eager, lr=1e-2, weight_decay=0.1)
    assert [(g["param_names"], g["lr"], g["weight_decay"], g["eps"]) for g in groups] == [
        (g["param_names"], g["lr"], g["weight_decay"], g["eps"]) for g in want
    ]
    opt = fxparam.optimizer(gm, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    assert [g["param_names"] for g in opt.param_groups] == [g["param_names"] for g in want]


def test_graphmodule_shares_the_models_parameters(setup: tuple[nn.Module, Plan, torch.Tensor]) -> None:
    base, plan, idx = setup
    model = copy.deepcopy(base)
    torch.manual_seed(3)
    gm = lower_graph(model, plan, init=True, example_inputs=idx)
    torch.manual_seed(3)
    eager = lower_eager(copy.deepcopy(base), plan, init=True)  # same re-init as eager
    for (name, p), (_, q) in zip(gm.named_parameters(), eager.named_parameters(), strict=True):
        assert p is model.get_parameter(name)
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    torch.testing.assert_close(gm(idx), eager(idx), atol=1e-6, rtol=1e-5)


def test_specialised_shapes_dtype_and_device_are_checked(gm: fx.GraphModule) -> None:
    with pytest.raises(LoweringError, match=r"exported for \(2, 16\).*dynamic=True"):
        gm(torch.zeros(3, 16, dtype=torch.long))
    with pytest.raises(LoweringError, match="torch.int32"):
        gm(torch.zeros(2, 16, dtype=torch.int32))
    with pytest.raises(LoweringError, match="inputs"):
        gm(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long))


def test_deepcopy_keeps_the_checks_and_the_plan(gm: fx.GraphModule) -> None:
    twin = copy.deepcopy(gm)
    assert fxparam.plan_of(twin) == fxparam.plan_of(gm)
    idx = torch.zeros(2, 16, dtype=torch.long)
    torch.testing.assert_close(twin(idx), gm(idx))
    with pytest.raises(LoweringError, match="lower it again"):
        twin.double()(idx)
    with pytest.raises(LoweringError, match="dynamic=True"):
        copy.deepcopy(twin)(torch.zeros(1, 16, dtype=torch.long))


def test_dynamic_shapes_on_request(setup: tuple[nn.Module, Plan, torch.Tensor]) -> None:
    base, plan, idx = setup
    gm = lower_graph(copy.deepcopy(base), plan, init=False, example_inputs=idx, dynamic=True)
    eager = lower_eager(copy.deepcopy(base), plan, init=False)
    for shape in [(3, 8), (2, 16), (4, 20)]:
        x = torch.randint(0, 256, shape)
        torch.testing.assert_close(gm(x), eager(x), atol=1e-6, rtol=1e-5)


def test_sdpa_without_scale_matches_the_eager_override() -> None:
    """nanoGPT style: eager uses the scoped SDPA override, the graph writes the SDPA node's scale."""
    path = Path(__file__).resolve().parents[1] / "nanogpt_style.py"
    spec = importlib.util.spec_from_file_location("nanogpt_style_lowering", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    base = mod.make(width=32, depth=2)
    plan = fxparam.plan(base, "completep", **{**COMPLETEP, "base_head_dim": 4})
    assert all(site.attr is None and site.scale != site.previous for site in plan.attention.values())
    idx = torch.randint(0, 128, (2, 16))
    targets = torch.randint(0, 128, (2, 16))
    eager = lower_eager(copy.deepcopy(base), plan, init=False)
    gm = lower_graph(copy.deepcopy(base), plan, init=False, example_inputs=(idx, targets))
    (le, loss_e), (lg, loss_g) = eager(idx, targets), gm(idx, targets)
    torch.testing.assert_close(lg, le, atol=1e-6, rtol=1e-5)
    loss_e.backward()
    loss_g.backward()
    for (name, p), (_, q) in zip(eager.named_parameters(), gm.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-7, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"norm_swaps": ["ln_f"]}, "GNS norm swaps"),
        ({"attention": {"blocks.0.attn": {"scale": 0.1, "previous": 0.25, "head_dim": 16, "kind": "manual"}}},
         "by hand"),
    ],
    ids=["norm-swaps", "manual-attention"],
)
def test_unsupported_plan_entries_name_the_eager_fix(setup: tuple[nn.Module, Plan, torch.Tensor],
                                                       change: dict, match: str) -> None:
    base, plan, idx = setup
    bad = Plan.model_validate({**plan.model_dump(), **change})
    with pytest.raises(LoweringError, match=match) as info:
        lower_graph(copy.deepcopy(base), bad, init=False, example_inputs=idx)
    assert "fxparam.transform" in str(info.value)


def test_refuses_transformed_models_and_other_models_plans(setup: tuple[nn.Module, Plan, torch.Tensor]) -> None:
    base, plan, idx = setup
    with pytest.raises(AlreadyTransformedError):
        lower_graph(lower_eager(copy.deepcopy(base), plan, init=False), plan, init=False, example_inputs=idx)
    other = gpt_case("gelu-learned", depth=3).make()
    with pytest.raises(LoweringError, match="does not match"):
        lower_graph(other, plan, init=False, example_inputs=idx)


class _Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sin(), x.cos()


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = _Pair()
        self.mix = nn.Bilinear(4, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(x)
        return self.mix(a, b)


def _toy_plan(outputs: dict[str, float], inputs: dict[str, float] | None = None) -> Plan:
    params = {n: ParamPlan(role="hidden") for n, _ in _Toy().named_parameters()}
    return Plan(params=params, output_multipliers=outputs, input_multipliers=inputs or {})


@pytest.mark.parametrize(
    ("outputs", "inputs", "match"),
    [({"pair": 2.0}, {}, "2 tensors leave"), ({}, {"mix": 2.0}, "2 activations enter")],
    ids=["output", "input"],
)
def test_ambiguous_module_boundaries_are_refused(outputs: dict[str, float], inputs: dict[str, float],
                                                 match: str) -> None:
    gm = torch.export.export(_Toy(), (torch.randn(2, 4),), strict=False).module()
    with pytest.raises(LoweringError, match=match):
        apply_plan_to_graph(gm.graph, _toy_plan(outputs, inputs))
    with pytest.raises(LoweringError, match="no nodes in the graph"):
        apply_plan_to_graph(gm.graph, _toy_plan({"absent": 2.0}))



class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.inner(x)))


def test_nested_and_chained_multipliers_compose_like_the_hooks() -> None:
    """inner and inner.0 both scale the same tensor; norm's output feeds head's scaled input."""
    torch.manual_seed(0)
    model = _Stack()
    params = {n: ParamPlan(role="hidden") for n, _ in model.named_parameters()}
    plan = Plan(params=params, output_multipliers={"inner.0": 3.0, "inner": 0.5, "norm": 2.0},
                input_multipliers={"head": 0.25})
    x = torch.randn(2, 4)
    gm = lower_graph(copy.deepcopy(model), plan, init=False, example_inputs=x)
    eager = lower_eager(copy.deepcopy(model), plan, init=False)
    torch.testing.assert_close(gm(x), eager(x))
    assert sorted(f for _n, f in multiplier_nodes(gm)) == [0.25, 0.5, 2.0, 3.0]
    assert not torch.allclose(model(x), eager(x))


def test_supar_masks_live_on_the_graphmodule(setup: tuple[nn.Module, Plan, torch.Tensor]) -> None:
    base, _plan, idx = setup
    plan = fxparam.plan(base, "completep+supar", **COMPLETEP, density=0.5, store_masks=True)
    torch.manual_seed(2)
    eager = lower_eager(copy.deepcopy(base), plan, init=True)
    torch.manual_seed(2)
    gm = lower_graph(copy.deepcopy(base), plan, init=True, example_inputs=idx)
    assert list(gm.state_dict()) == list(eager.state_dict())  # stored masks: the same extra keys
    for fqn in plan.masks:
        torch.testing.assert_close(gm.get_parameter(fqn), eager.get_parameter(fqn), atol=0, rtol=0)
    state = {k: v.clone() for k, v in gm.state_dict().items()}
    dense = {k: (torch.ones_like(v) if k in plan.masks else v) for k, v in state.items()}
    gm.load_state_dict(dense)  # loading a dense tensor re-zeroes the masked entries
    for fqn in plan.masks:
        assert torch.equal(gm.get_parameter(fqn) != 0, state[fqn + "_mask"]), fqn
    twin = copy.deepcopy(gm)  # a copy re-hooks its own Parameters at its first call
    twin(idx).sum().backward()
    for fqn in plan.masks:
        grad = twin.get_parameter(fqn).grad
        assert grad is not None and (grad[~state[fqn + "_mask"]] == 0).all(), fqn
