"""Eager, graph and compiled lowerings agree: init, outputs, every gradient, 5-step losses.

The compiled lowering here is ``fxparam.compile(..., inner=...)`` with the same pre-grad
rewrite of Dynamo's graph that Inductor gets, without Inductor's C++ compile time (the real
Inductor runs are in ``test_lowering_inductor.py``): under CompleteP the rewritten graph
goes through AOT autograd (``"aot_eager"``); under muP it runs with eager autograd
(``"eager"``), which is cheaper and checks the rewrite itself.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from _lowering_cases import CONFIGS, Case, Run, batch, gpt_case, hf_case, train

import fxparam
from fxparam.analysis import Analysis, analyse
from fxparam.api import compile as fx_compile
from fxparam.configs import resolve_config
from fxparam.errors import LoweringError
from fxparam.lowering import unwrap
from fxparam.lowering.eager import lower_eager
from fxparam.lowering.graph import lower_graph
from fxparam.passes import build_plan

# Tolerances (float32).  Eager and graph run the same ATen ops on the same weights, so they
# agree to rounding; aot_eager runs AOT autograd's decomposed graph, whose reductions can
# round differently: 1e-5 relative on outputs and gradients.  Losses after 5 AdamW steps
# compound those roundings through Adam's normalisation: 1e-5 absolute on a loss ~5.5.
OUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-6, "rtol": 1e-4}
LOSS_TOL = 1e-5

CASES = [gpt_case(o) for o in ("gelu-learned", "swiglu-rms-rope-tied", "parallel-alibi")] + [
    hf_case("gpt2"),
    hf_case("llama"),
]


@functools.cache
def _base_and_analysis(case: Case) -> tuple[torch.nn.Module, Analysis]:
    torch.manual_seed(0)
    base = case.make()
    return base, analyse(base)


def _lowered(case: Case, config: str) -> dict[str, torch.nn.Module]:
    base, analysis = _base_and_analysis(case)
    name, kwargs = CONFIGS[config]
    plan = build_plan(analysis, resolve_config(name, **kwargs))
    idx, _ = batch(0)
    models = {}
    torch.manual_seed(1)
    models["eager"] = lower_eager(copy.deepcopy(base), plan, init=True)
    torch.manual_seed(1)
    models["graph"] = lower_graph(copy.deepcopy(base), plan, init=True, example_inputs=case.inputs(idx))
    torch.manual_seed(1)
    inner = "aot_eager" if config == "completep" else "eager"
    models["compiled"] = fx_compile(copy.deepcopy(base), plan, init=True, inner=inner)
    return models


def _assert_runs_agree(ref: Run, run: Run, name: str) -> None:
    assert run.init.keys() == ref.init.keys()
    for fqn in ref.init:  # same re-init under the same seed
        torch.testing.assert_close(run.init[fqn], ref.init[fqn], atol=0, rtol=0)
    assert run.lrs == ref.lrs, f"{name}: param groups differ"
    _assert_close(ref.logits, run.logits, f"{name} logits", OUT_TOL)
    assert run.grads.keys() == ref.grads.keys()
    for fqn in ref.grads:
        _assert_close(ref.grads[fqn], run.grads[fqn], f"{name} grad of {fqn}", GRAD_TOL)
    assert max(abs(a - b) for a, b in zip(ref.losses, run.losses, strict=True)) <= LOSS_TOL, (
        name, ref.losses, run.losses)


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: dict[str, float]) -> None:
    torch.testing.assert_close(b, a, **tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("config", ["mup", "completep"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lowerings_agree(case: Case, config: str) -> None:
    torch._dynamo.reset()
    models = _lowered(case, config)
    runs = {k: train(case, m) for k, m in models.items()}
    assert len(runs["eager"].grads) == len(dict(models["eager"].named_parameters()))
    for name in ("graph", "compiled"):
        _assert_runs_agree(runs["eager"], runs[name], name)
    assert fxparam.plan_of(models["compiled"]) is fxparam.plan_of(models["graph"]) is fxparam.plan_of(models["eager"])


def test_supar_masks_agree_across_lowerings() -> None:
    """SμPar on CompleteP: masked weights stay exactly 0 and get exactly 0 gradient in all three."""
    case = CASES[0]
    torch._dynamo.reset()
    models = _lowered(case, "completep+supar")
    plan = fxparam.plan_of(models["eager"])
    assert plan.masks
    runs = {k: train(case, m) for k, m in models.items()}
    for name in ("graph", "compiled"):
        _assert_runs_agree(runs["eager"], runs[name], name)
    for name, model in models.items():
        params = dict(unwrap(model).named_parameters())
        for fqn in plan.masks:
            kept = runs["eager"].init[fqn] != 0
            assert (runs[name].grads[fqn][~kept] == 0).all(), (name, fqn)
            assert (params[fqn][~kept] == 0).all(), (name, fqn)


def test_gns_eager_model_compiles_and_graph_lowerings_refuse() -> None:
    """GNS swaps norm modules (their own backward): the graph lowering refuses; the eager model under
    Dynamo and fxparam.compile (which swaps the norms before tracing, issue 15) agree with eager."""
    case = CASES[0]
    base, analysis = _base_and_analysis(case)
    plan = build_plan(analysis, resolve_config("completep+gns", **CONFIGS["completep+gns"][1]))
    idx, _ = batch(0)
    with pytest.raises(LoweringError, match="GNS norm swaps.*fxparam.transform"):
        lower_graph(copy.deepcopy(base), plan, example_inputs=case.inputs(idx))
    torch._dynamo.reset()
    torch.manual_seed(1)
    eager_run = train(case, lower_eager(copy.deepcopy(base), plan, init=True))
    torch.manual_seed(1)
    compiled = torch.compile(lower_eager(copy.deepcopy(base), plan, init=True), backend="aot_eager")
    _assert_runs_agree(eager_run, train(case, compiled), "eager+torch.compile")
    torch._dynamo.reset()
    torch.manual_seed(1)
    fx_compiled = fx_compile(copy.deepcopy(base), plan, init=True, inner="aot_eager")
    _assert_runs_agree(eager_run, train(case, fx_compiled), "fxparam.compile")


def test_negative_control_untransformed_differs() -> None:
    """The comparison can fail: the plain model (no plan applied) does not match the eager lowering."""
    case = gpt_case("gelu-learned")
    torch.manual_seed(0)
    base = case.make()
    plan = fxparam.plan(base, "completep", **CONFIGS["completep"][1])
    eager = lower_eager(copy.deepcopy(base), plan, init=False)
    idx, _ = batch(0)
    assert not torch.allclose(case.logits(eager, idx), case.logits(base, idx), **OUT_TOL)
