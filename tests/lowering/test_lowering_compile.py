"""The compile lowering's API (backend, pre-grad pass, fxparam.compile) and eager models under Dynamo.

Everything here uses Dynamo's "eager" / "aot_eager" backends or ``torch._dynamo.explain``:
no Inductor C++ compile (see ``test_lowering_inductor.py`` for those).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from _lowering_cases import COMPLETEP, GPT_OPTIONS, MUP, Case, gpt_case, hf_case

import fxparam
import fxparam._version
from fxparam.api import compile as fx_compile
from fxparam.errors import AlreadyTransformedError, ConfigError, LoweringError
from fxparam.lowering.compile import PlanPass, backend, compile_pass
from fxparam.lowering.eager import lower_eager

TOL = {"atol": 1e-6, "rtol": 1e-5}  # float32; Dynamo's eager backend runs the same ops


@pytest.fixture(scope="module")
def gpt() -> tuple[nn.Module, fxparam.Plan]:
    torch.manual_seed(0)
    base = gpt_case("gelu-learned").make()
    return base, fxparam.plan(base, "completep", **COMPLETEP)


def _nanogpt() -> nn.Module:
    path = Path(__file__).resolve().parents[1] / "nanogpt_style.py"
    spec = importlib.util.spec_from_file_location("nanogpt_style_compile", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    return mod.make(width=32, depth=2)


# ----------------------------------------------------------------- API and errors


def test_backend_needs_a_plan_and_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"fxparam.plan\(model"):
        backend("mup")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="inner backend"):
        backend(fxparam.Plan(), inner="aot_eager", options={"max_autotune": True})


def test_backend_accepts_plan_json(gpt: tuple[nn.Module, fxparam.Plan]) -> None:
    base, plan = gpt
    be = backend(plan.to_json(), inner="eager")
    assert be.plan == plan
    idx = torch.randint(0, 256, (2, 16))
    out = torch.compile(copy.deepcopy(base), backend=be)(idx)
    torch.testing.assert_close(out, lower_eager(copy.deepcopy(base), plan, init=False)(idx), **TOL)
    assert be.plan_pass.missing() == []


def test_cache_key_hashes_the_plan_and_the_version(gpt: tuple[nn.Module, fxparam.Plan],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    base, plan = gpt
    other = fxparam.plan(base, "mup", **MUP)
    key = compile_pass(plan).uuid()
    assert key == compile_pass(fxparam.Plan.from_json(plan.to_json())).uuid()  # stable for equal plans
    assert key != compile_pass(other).uuid()
    monkeypatch.setattr(fxparam._version, "__version__", "0.0.0+other")  # the version every layer reads
    assert compile_pass(plan).uuid() != key
    assert isinstance(compile_pass(plan), torch._inductor.custom_graph_pass.CustomGraphPass)


def test_the_pass_refuses_post_grad_graphs(gpt: tuple[nn.Module, fxparam.Plan]) -> None:
    _base, plan = gpt
    graph = fx.Graph()
    x = graph.placeholder("primals_1")
    graph.output(graph.call_function(torch.ops.aten.mul.Tensor, (x, 2.0)))
    with pytest.raises(LoweringError, match="pre_grad_custom_pass"):
        compile_pass(plan)(graph)


def test_fxparam_compile_records_the_plan_and_guards_the_uncompiled_module(
    gpt: tuple[nn.Module, fxparam.Plan],
) -> None:
    base, plan = gpt
    model = copy.deepcopy(base)
    compiled = fx_compile(model, plan, init=False, inner="eager")
    assert fxparam.plan_of(compiled) is plan and fxparam.plan_of(model) is plan
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(compiled(idx), lower_eager(copy.deepcopy(base), plan, init=False)(idx), **TOL)
    with pytest.raises(LoweringError, match="uncompiled"):
        model(idx)
    with pytest.raises(AlreadyTransformedError):
        fxparam.transform(model, "completep", **COMPLETEP)
    with pytest.raises(AlreadyTransformedError):
        fx_compile(lower_eager(copy.deepcopy(base), plan, init=False), plan)
    opt = fxparam.optimizer(compiled, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    assert len(opt.param_groups) == len(fxparam.param_groups(model, lr=1e-2, weight_decay=0.1))


def test_fxparam_compile_builds_the_plan_from_a_config(gpt: tuple[nn.Module, fxparam.Plan]) -> None:
    base, plan = gpt
    model = copy.deepcopy(base)
    fx_compile(model, "completep", init=False, inner="eager", **COMPLETEP)
    assert fxparam.plan_of(model).fingerprint() == plan.fingerprint()


def test_unsupported_plans_are_refused_before_anything_changes(gpt: tuple[nn.Module, fxparam.Plan]) -> None:
    base, plan = gpt
    model = copy.deepcopy(base)
    # (GNS norm swaps are supported since issue 15: fxparam.compile swaps them before tracing.)
    name, site = next(iter(plan.attention.items()))
    # a hand-written site whose scale must change (an unchanged one needs no setting: muP's ratio is 1 at the base head dim)
    manual = site.model_copy(update={"kind": "manual", "scale": site.previous * 0.5})
    bad = plan.model_copy(update={"attention": {**plan.attention, name: manual}})
    with pytest.raises(LoweringError, match="attention logit scale"):
        fx_compile(model, bad)
    assert getattr(model, "_fxparam_plan", None) is None and not model._forward_pre_hooks


class _Wrapper(nn.Module):
    """A DDP-like wrapper: the user's FQNs appear behind ``module.`` in the compiled graph."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.module(idx)


class _Breaking(nn.Module):
    """A wrapper with a graph break between blocks: Dynamo hands the backend several graphs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = m.wte(idx) + m.wpe(torch.arange(idx.shape[1]))
        x = m.blocks[0](x)
        torch._dynamo.graph_break()
        x = m.blocks[1](x)
        return m.lm_head(m.ln_f(x))


@pytest.mark.parametrize("wrapper", [_Wrapper, _Breaking], ids=["ddp-like", "graph-break"])
def test_wrapped_models_and_graph_breaks(gpt: tuple[nn.Module, fxparam.Plan], wrapper: type[nn.Module]) -> None:
    base, plan = gpt
    idx = torch.randint(0, 256, (2, 16))
    want = lower_eager(copy.deepcopy(base), plan, init=False)(idx)
    be = backend(plan, inner="eager")
    out = torch.compile(wrapper(copy.deepcopy(base)), backend=be)(idx)
    torch.testing.assert_close(out, want, **TOL)
    assert be.plan_pass.missing() == []
    assert len(be.plan_pass.rewrites) == (2 if wrapper is _Breaking else 1)


class _BreakInside(nn.Module):
    """Dropout replacement with a graph break: the break is inside each block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return x


def test_a_graph_break_inside_a_block_is_refused_not_half_applied(gpt: tuple[nn.Module, fxparam.Plan]) -> None:
    """Dynamo compiles each block as its own frame (and may run GPT.forward uncompiled): refuse, don't guess."""
    base, plan = gpt
    model = copy.deepcopy(base)
    for block in model.blocks:
        block.drop = _BreakInside()
    idx = torch.randint(0, 256, (2, 16))
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="graph break inside a submodule"):
        torch.compile(model, backend=backend(plan, inner="eager"))(idx)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported):  # fxparam.compile: fullgraph=True by default
        fx_compile(copy.deepcopy(model), plan, init=False, inner="eager")(idx)
    eager = lower_eager(copy.deepcopy(model), plan, init=False)  # the fix the error names
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(eager, backend="eager")(idx), eager(idx), **TOL)


# ----------------------------------------------------------------- eager models under Dynamo

EAGER_CASES: list[Case] = [gpt_case(o) for o in GPT_OPTIONS] + [
    Case("nanogpt-style", _nanogpt), hf_case("gpt2"), hf_case("llama")]


@pytest.mark.parametrize("case", EAGER_CASES, ids=lambda c: c.name)
def test_eager_transform_adds_no_graph_breaks(case: Case) -> None:
    """``torch._dynamo.explain`` of the transformed model: one graph, no break (every plain model has none).

    nanoGPT-style attention has no scale attribute, so the eager lowering sets its scale
    with the scoped SDPA override (``fxparam/lowering/_sdpa.py``): it must trace too, and
    the compiled model must use the planned scale.
    """
    torch.manual_seed(0)
    model = case.make()
    kw = {**COMPLETEP, "base_head_dim": 4} if case.name == "nanogpt-style" else COMPLETEP
    plan = fxparam.plan(model, "completep", **kw)
    assert all(site.scale != site.previous for site in plan.attention.values())
    idx = torch.randint(0, 128, (2, 16))
    args, kwargs = ((), {"input_ids": idx}) if case.hf else ((idx,), {})
    lower_eager(model, plan, init=False)
    explained = torch._dynamo.explain(model)(*args, **kwargs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    if case.name == "nanogpt-style":
        torch._dynamo.reset()
        want, _ = model(idx)
        got, _ = torch.compile(model, backend="eager", fullgraph=True)(idx)
        torch.testing.assert_close(got, want, **TOL)
        base = _nanogpt()  # same seed, same weights: the planned scale must matter
        assert not torch.allclose(got, base(idx)[0], **TOL)


def test_eager_gns_adds_no_graph_breaks() -> None:
    torch.manual_seed(0)
    model = gpt_case("gelu-learned").make()
    lower_eager(model, fxparam.plan(model, "completep+gns", **COMPLETEP), init=False)
    idx = torch.randint(0, 256, (2, 16))
    fxparam.gns.prepare(model, idx)  # per-example gradient sinks are graph inputs: allocated before tracing
    explained = torch._dynamo.explain(model)(idx)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_eager_supar_adds_no_graph_breaks() -> None:
    torch.manual_seed(0)
    model = gpt_case("gelu-learned").make()
    lower_eager(model, fxparam.plan(model, "completep+supar", **COMPLETEP, density=0.5), init=False)
    explained = torch._dynamo.explain(model)(torch.randint(0, 256, (2, 16)))
    assert explained.graph_break_count == 0, explained.break_reasons


def test_private_torch_apis_we_rely_on() -> None:
    """Pinned to the installed torch: fail loudly here, not deep inside a compile, when they move."""
    from torch._inductor import config as inductor_config
    from torch._inductor.codecache import resolve_pre_grad_pass_timing
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files  # noqa: F401

    assert "config_patches" in inspect.signature(compile_fx).parameters
    assert hasattr(inductor_config, "pre_grad_custom_pass")
    with inductor_config.patch(pre_grad_custom_pass=compile_pass(fxparam.Plan())):
        # late: pre-grad passes run after the cache lookup, so the pass uuid is what keeps plans apart
        assert resolve_pre_grad_pass_timing() == "late"
    assert callable(getattr(fx.GraphModule, "_register_deepcopy_hook", None))
    assert callable(torch._dynamo.lookup_backend)
    assert isinstance(PlanPass(fxparam.Plan()), CustomGraphPass)
