"""Real Inductor runs (C++ on CPU): gradients through the pre-grad pass, fusion, cache keys.

Inductor's caches go to a fresh directory for this module, so the results do not depend
on what an earlier run left behind (and the first compile pays Inductor's cold start).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from _lowering_cases import COMPLETEP, MUP, Case, gpt_case, train

import fxparam
from fxparam.api import compile as fx_compile
from fxparam.lowering.compile import PlanPass, backend
from fxparam.lowering.eager import lower_eager

# Inductor fuses and reorders float32 reductions (softmax, layer norm, matmul epilogues):
# outputs agree to ~1e-6 relative, gradients to ~1e-5; 5 AdamW steps keep losses within 1e-4.
OUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-5, "rtol": 1e-4}
LOSS_TOL = 1e-4

CASE: Case = gpt_case("gelu-learned", width=32, depth=1)
# depth 1 keeps compiles short; base_depth=2 keeps a non-trivial residual multiplier (m_L = 1/2)
PLAN_KW = {**COMPLETEP, "base_depth": 2}


@pytest.fixture(autouse=True, scope="module")
def _fresh_inductor_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    mp.undo()


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    torch.manual_seed(0)
    return CASE.make()


def test_inductor_training_matches_eager(base: torch.nn.Module) -> None:
    plan = fxparam.plan(base, "completep", **PLAN_KW)
    assert plan.attention and plan.output_multipliers
    torch.manual_seed(1)
    eager = lower_eager(copy.deepcopy(base), plan, init=True)
    torch.manual_seed(1)
    compiled = fx_compile(copy.deepcopy(base), plan, init=True)  # inner="inductor"
    ref, run = train(CASE, eager), train(CASE, compiled)
    torch.testing.assert_close(run.logits, ref.logits, **OUT_TOL)
    assert run.grads.keys() == ref.grads.keys() and len(ref.grads) == len(list(base.parameters()))
    for fqn in ref.grads:
        torch.testing.assert_close(run.grads[fqn], ref.grads[fqn], **GRAD_TOL, msg=lambda m, f=fqn: f"{f}: {m}")
    assert max(abs(a - b) for a, b in zip(ref.losses, run.losses, strict=True)) <= LOSS_TOL, (ref.losses, run.losses)
    assert run.lrs == ref.lrs


class _ConstantKey(PlanPass):
    """The negative control: a pass whose cache key ignores the plan."""

    def uuid(self) -> str:
        return "fxparam-constant-key"


def _kernels(model: torch.nn.Module, be: object, idx: torch.Tensor, *, cache: bool = True) -> tuple[torch.Tensor, int]:
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    from torch._inductor import metrics

    torch._dynamo.reset()
    metrics.reset()
    with inductor_config.patch(fx_graph_cache=cache), functorch_config.patch(enable_autograd_cache=cache), \
            torch.no_grad():
        out = torch.compile(model, backend=be, dynamic=False)(idx)  # static: earlier shapes cannot leak in
    return out, metrics.generated_kernel_count


def test_multipliers_fuse_and_plans_never_share_a_cache_entry(base: torch.nn.Module) -> None:
    """Forward (inference) compiles of one model under two plans.

    - plain vs plan A (pre-grad pass) vs eager-transformed A and B (the eager lowering traced:
      hooks, ``ScaledLinear``): the same number of Inductor kernels, each counted from a fresh
      codegen (caches off) - the multipliers fuse into neighbouring pointwise kernels, the
      attention scale is an SDPA argument;
    - with a plan-blind cache key, plan B silently reuses plan A's compiled artifact (the
      negative control); with PlanPass's key it does not.
    """
    model = copy.deepcopy(base).eval()
    plan_a = fxparam.plan(model, "completep", **PLAN_KW)
    plan_b = fxparam.plan(model, "mup", **{**MUP, "base_width": 8})
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        eager_a = lower_eager(copy.deepcopy(model), plan_a, init=False)
        want_a = eager_a(idx)
        eager_b = lower_eager(copy.deepcopy(model), plan_b, init=False)
        want_b = eager_b(idx)
    assert not torch.allclose(want_a, want_b, atol=1e-3)

    _, plain = _kernels(model, "inductor", idx, cache=False)  # fresh codegen: counts from this process only
    out_a, kernels_a = _kernels(model, backend(plan_a), idx, cache=False)
    torch.testing.assert_close(out_a, want_a, **OUT_TOL)
    out_eager, kernels_eager = _kernels(eager_a, "inductor", idx, cache=False)  # residual and readout
    torch.testing.assert_close(out_eager, want_a, **OUT_TOL)
    out_eager_b, kernels_eager_b = _kernels(eager_b, "inductor", idx, cache=False)  # readout only
    torch.testing.assert_close(out_eager_b, want_b, **OUT_TOL)
    assert plain > 0
    assert kernels_a == kernels_eager == kernels_eager_b == plain, (plain, kernels_a, kernels_eager, kernels_eager_b)

    # caches on: a plan-blind key hands plan B the artifact compiled for plan A
    blind = backend(plan_a)
    blind.plan_pass.__class__ = _ConstantKey
    out_a, _ = _kernels(model, blind, idx)
    torch.testing.assert_close(out_a, want_a, **OUT_TOL)
    blind_b = backend(plan_b)
    blind_b.plan_pass.__class__ = _ConstantKey
    out_blind, _ = _kernels(model, blind_b, idx)
    torch.testing.assert_close(out_blind, want_a, **OUT_TOL)  # wrong plan: the cache key must carry the plan

    keyed = backend(plan_b)
    out_b, _ = _kernels(model, keyed, idx)
    torch.testing.assert_close(out_b, want_b, **OUT_TOL)
    assert keyed.plan_pass.missing() == []


def test_pre_grad_pass_through_inductor_options(base: torch.nn.Module) -> None:
    """``torch.compile(model, options={"pre_grad_custom_pass": fxparam.compile_pass(plan)})``."""
    from fxparam.lowering.compile import compile_pass

    model = copy.deepcopy(base).eval()
    plan = fxparam.plan(model, "completep", **PLAN_KW)
    idx = torch.randint(0, 256, (2, 16))
    the_pass = compile_pass(plan)
    torch._dynamo.reset()
    with torch.no_grad():
        want = lower_eager(copy.deepcopy(model), plan, init=False)(idx)
        got = torch.compile(model, options={"pre_grad_custom_pass": the_pass})(idx)
    torch.testing.assert_close(got, want, **OUT_TOL)
    assert the_pass.missing() == []
