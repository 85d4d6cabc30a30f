"""Eager / graph / compile lowerings agree on an HF mixture-of-experts model (issue 14, "what must be shown").

HF Llama is in tests/lowering/test_lowering_differential.py; this adds Mixtral (top-2 of 4
experts, data-dependent routing).  The eager lowering is the reference (it is verified
site by site by ``fxparam.verify``); the negative control is a plan with one branch
multiplier changed, whose run must differ - so agreement is not an accident.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _lowering_cases import CONFIGS, Case, batch, train

import fxparam
from fxparam.analysis import analyse
from fxparam.api import compile as fx_compile
from fxparam.configs import resolve_config
from fxparam.lowering.eager import lower_eager
from fxparam.lowering.graph import lower_graph
from fxparam.lowering.verify import verify
from fxparam.passes import build_plan

transformers = pytest.importorskip("transformers")


def _mixtral() -> torch.nn.Module:
    cfg = transformers.MixtralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=64, num_local_experts=4, num_experts_per_tok=2, use_cache=False,
    )
    return transformers.MixtralForCausalLM(cfg)


@pytest.mark.slow
def test_mixtral_lowerings_agree_and_a_changed_multiplier_does_not() -> None:
    case = Case("hf-mixtral", _mixtral, hf=True)
    torch.manual_seed(0)
    base = case.make()
    name, kwargs = CONFIGS["completep"]
    plan = build_plan(analyse(base), resolve_config(name, **kwargs))
    assert plan.m_L == 2.0 and plan.output_multipliers  # depth 2 over base depth 1: branches x 1/2
    idx, _ = batch(0)
    models = {}
    torch.manual_seed(1)
    models["eager"] = lower_eager(copy.deepcopy(base), plan, init=True)
    torch.manual_seed(1)
    models["graph"] = lower_graph(copy.deepcopy(base), plan, init=True, example_inputs=case.inputs(idx))
    torch.manual_seed(1)
    models["compiled"] = fx_compile(copy.deepcopy(base), plan, init=True, inner="aot_eager")
    assert verify(models["eager"]).ok
    runs = {k: train(case, m) for k, m in models.items()}
    ref = runs["eager"]
    for key in ("graph", "compiled"):
        run = runs[key]
        torch.testing.assert_close(run.logits, ref.logits, atol=1e-5, rtol=1e-5)
        assert run.grads.keys() == ref.grads.keys() and len(ref.grads) > 10
        for fqn in ref.grads:
            torch.testing.assert_close(run.grads[fqn], ref.grads[fqn], atol=1e-6, rtol=1e-4)
        assert max(abs(a - b) for a, b in zip(run.losses, ref.losses, strict=True)) <= 1e-5
    # negative control: one branch multiplier changed -> a different run
    site = next(iter(plan.output_multipliers))
    changed = plan.model_copy(deep=True)
    changed.output_multipliers[site] = plan.output_multipliers[site] * 2
    torch.manual_seed(1)
    other = train(case, lower_eager(copy.deepcopy(base), changed, init=True))
    assert not torch.allclose(other.logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert fxparam.plan_of(models["compiled"]) is plan
