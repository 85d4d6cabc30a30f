"""Plans match the parameterization table of shared/reference/parameterizations.md, per FQN."""

import math

import pytest

import fxparam
from fxparam.models import GPT, GPTConfig
from fxparam.models.hf import hf_model
from fxparam.passes.width import INPUT

SIGMA = 0.02


def expected(role, in_block, m_d, m_L, alpha, depth_rules):
    """The reference table, written out independently of the pass."""
    d_lr = m_L ** (alpha - 1) if depth_rules else 1.0
    d_eps = m_L**alpha if depth_rules else 1.0
    # SGD: the block gradient carries the branch multiplier m_L^-alpha (Adam normalises it away), so
    # the SGD depth factor is m_L^(2 alpha - 1) (eta at alpha = 1/2: Depth-muP for SGD, Tensor Programs VI)
    d_sgd = m_L ** (2 * alpha - 1) if depth_rules else 1.0
    if role == "embedding":
        return dict(init_std=SIGMA, lr_mult=1.0, wd_mult=1.0, eps_mult=1 / m_d, sgd_lr_mult=m_d)
    if role == "hidden":
        return dict(init_std=SIGMA / math.sqrt(m_d), lr_mult=d_lr / m_d, wd_mult=m_d, eps_mult=1 / (m_d * d_eps),
                    sgd_lr_mult=d_sgd)
    if role == "readout":
        return dict(init_std=SIGMA, lr_mult=1.0, wd_mult=1.0, eps_mult=1 / m_d, sgd_lr_mult=m_d)  # eps: CompleteP code
    if in_block:
        return dict(init_std=None, lr_mult=d_lr, wd_mult=0.0, eps_mult=1 / (m_d * d_eps), sgd_lr_mult=m_d * d_sgd)
    return dict(init_std=None, lr_mult=1.0, wd_mult=0.0, eps_mult=1 / m_d, sgd_lr_mult=m_d)


def check_plan(model, cfg, m_d, m_L, alpha, depth_rules):
    analysis = fxparam.inspect(model)
    plan = fxparam.plan(model, cfg)
    assert plan.m_d == pytest.approx(m_d) and plan.m_L == pytest.approx(m_L)
    for fqn, info in analysis.params.items():
        p = plan.params[fqn]
        assert p.role == info.role
        if info.tied_to:
            assert p.tied_to == info.tied_to
            continue
        want = expected(info.role, info.block is not None, m_d, m_L, alpha, depth_rules)
        for key, value in want.items():
            got = getattr(p, key)
            assert (got is None and value is None) or got == pytest.approx(value), (fqn, key, got, value)
    # forward multipliers: readout input alpha_out/m_d, residual branches 1/m_L^alpha
    readouts = {info.module for info in analysis.params.values() if info.role == "readout"}
    for module in readouts:
        assert plan.multipliers[INPUT + module] == pytest.approx(1 / m_d)
    branch_modules = {m for r in analysis.residuals for m in r.output_modules}
    for module in branch_modules:
        want = 1 / m_L**alpha if depth_rules else 1.0
        assert plan.multipliers.get(module, 1.0) == pytest.approx(want), module
    assert len(branch_modules) == 2 * analysis.depth
    for site in analysis.attention:
        a = plan.attention[site.module]
        assert a.scale == pytest.approx(math.sqrt(site.head_dim) / site.head_dim)
    return plan


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_mup_table(tie):
    model = GPT(GPTConfig(width=256, depth=4, head_dim=16, tie_embeddings=tie))
    plan = check_plan(model, fxparam.MuP(base_width=64), m_d=4, m_L=1, alpha=1, depth_rules=False)
    if tie:
        assert plan.params["lm_head.weight"].tied_to == "wte.weight"
        assert plan.params["wte.weight"].role == "embedding"


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_gpt_completep_table(alpha):
    model = GPT(GPTConfig(width=256, depth=8, head_dim=16, mlp="swiglu", norm="rmsnorm"))
    check_plan(model, fxparam.CompleteP(base_width=64, base_depth=2, alpha=alpha), m_d=4, m_L=4, alpha=alpha,
               depth_rules=True)


def test_hf_gpt2_table():
    pytest.importorskip("transformers")
    model = hf_model("gpt2", n_embd=128, n_head=8, n_layer=4)
    plan = check_plan(model, fxparam.CompleteP(base_width=32, base_depth=2), m_d=4, m_L=2, alpha=1,
                      depth_rules=True)
    assert plan.multipliers["transformer.h.3.mlp.c_proj"] == pytest.approx(0.5)
    assert plan.attention["transformer.h.0.attn"].attr == "scaling"


def test_hf_llama_table():
    pytest.importorskip("transformers")
    model = hf_model("llama", hidden_size=128, intermediate_size=352, num_attention_heads=8,
                     num_key_value_heads=8, num_hidden_layers=6)
    plan = check_plan(model, fxparam.CompleteP(base_width=64, base_depth=3), m_d=2, m_L=2, alpha=1,
                      depth_rules=True)
    assert plan.multipliers["model.layers.5.self_attn.o_proj"] == pytest.approx(0.5)
    assert plan.multipliers["input:lm_head"] == pytest.approx(0.5)


def test_sp_plan_is_uniform():
    model = GPT(GPTConfig(width=128, depth=2))
    plan = fxparam.plan(model, "sp")
    assert not plan.multipliers and not plan.attention
    for p in plan.params.values():
        assert p.lr_mult == 1.0 and p.eps_mult == 1.0
        if p.role != "vector":
            assert (p.init, p.init_std) == ("normal", 0.02)
        else:
            assert p.wd_mult == 0.0


def test_attention_rule_with_growing_head_dim():
    model = GPT(GPTConfig(width=256, depth=2, heads=4))  # head dim 64 = 4 x base 16
    plan = fxparam.plan(model, "mup", base_width=64, base_head_dim=16)
    site = plan.attention["blocks.0.attn"]
    assert site.head_dim == 64
    assert site.scale == pytest.approx(math.sqrt(16) / 64)  # 1/d_head rule, = SP at the base
    assert site.previous == pytest.approx(1 / 8)


def test_plan_json_round_trip_and_fingerprint():
    model = GPT(GPTConfig(width=128, depth=2))
    plan = fxparam.plan(model, "completep", base_width=64, base_depth=1)
    again = fxparam.Plan.from_json(plan.to_json())
    assert again == plan and again.fingerprint() == plan.fingerprint()
    other = fxparam.plan(model, "completep", base_width=32, base_depth=1)
    assert other.fingerprint() != plan.fingerprint()
    assert "blocks.{0,1}.attn.proj" in plan.summary()  # repeated blocks fold (fxparam/_fold.py)
