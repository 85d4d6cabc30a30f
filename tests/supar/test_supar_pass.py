"""The SμPar pass: which weights, the density-corrected rules, overrides, density 1 = dense."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import HIDDEN, TINY

import fxparam
from fxparam.configs import config_from_json, resolve_config
from fxparam.models import GPT
from fxparam.models.hf import hf_model
from fxparam.passes import build_plan
from fxparam.passes.supar import maskable
from fxparam.plan import MaskPlan, Plan

WIDE = TINY.replace(width=128)
RULES = ("init", "init_std", "lr_mult", "sgd_lr_mult", "wd_mult", "eps_mult", "density", "tied_to")


@pytest.fixture(scope="module")
def wide_analysis() -> fxparam.Analysis:
    return fxparam.inspect(GPT(WIDE))


def test_maskable_is_hidden_block_weights(tiny_analysis):
    assert maskable(tiny_analysis) == HIDDEN


@pytest.mark.parametrize("rho", [0.5, 0.25, 1 / 16])
@pytest.mark.parametrize("base", [fxparam.MuP(base_width=64), fxparam.CompleteP(base_width=32, base_depth=1)])
def test_rules_are_width_rules_with_m_d_times_rho(wide_analysis, base, rho):
    dense = build_plan(wide_analysis, base)
    plan = build_plan(wide_analysis, fxparam.compose(base, fxparam.SuPar(density=rho, seed=5)))
    assert set(plan.masks) == set(HIDDEN)
    for fqn, p in plan.params.items():
        d = dense.params[fqn]
        if fqn in HIDDEN:
            assert p.density == rho
            assert p.init_std == pytest.approx(d.init_std / math.sqrt(rho))  # sigma / sqrt(m_d rho)
            assert p.lr_mult == pytest.approx(d.lr_mult / rho)  # eta / (m_d rho)
            assert p.sgd_lr_mult == pytest.approx(d.sgd_lr_mult / rho)
            assert (p.wd_mult, p.eps_mult, p.init) == (d.wd_mult, d.eps_mult, d.init)  # dense rule
            assert plan.masks[fqn] == MaskPlan(density=rho, seed=5, store=False)
        else:  # embeddings, readout, norms, biases: dense and unchanged
            assert p == d
    # m_d = 2 at base 64: the hidden init is sigma / sqrt(2 rho), the Adam LR 1 / (2 rho)
    if isinstance(base, fxparam.MuP) and not isinstance(base, fxparam.CompleteP):
        hid = plan.params[HIDDEN[0]]
        assert hid.init_std == pytest.approx(0.02 / math.sqrt(2 * rho))
        assert hid.lr_mult == pytest.approx(1 / (2 * rho))
    assert (plan.multipliers, plan.attention) == (dense.multipliers, dense.attention)


def test_density_one_is_the_dense_plan_and_model(make_tiny, tiny_analysis, batch):
    base = fxparam.CompleteP(base_width=32, base_depth=1)
    dense = build_plan(tiny_analysis, base)
    one = build_plan(tiny_analysis, fxparam.compose(base, fxparam.SuPar(density=1.0, seed=3)))
    assert one.masks == {}
    assert one.params == dense.params
    assert (one.multipliers, one.attention, one.notes) == (dense.multipliers, dense.attention, dense.notes)
    a, b = make_tiny(base), make_tiny(fxparam.compose(base, fxparam.SuPar(density=1.0)))
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not [n for n, _ in b.named_buffers() if n.endswith("_mask")]
    assert torch.equal(a(batch), b(batch))


def test_override_of_one_means_dense(tiny_analysis):
    base = fxparam.MuP(base_width=64)
    plan = build_plan(
        tiny_analysis, fxparam.compose(base, fxparam.SuPar(density=0.25, overrides={HIDDEN[0]: 1.0}))
    )
    assert HIDDEN[0] not in plan.masks
    assert plan.params[HIDDEN[0]] == build_plan(tiny_analysis, base).params[HIDDEN[0]]


def test_overrides_exact_first_then_first_matching_pattern(tiny_analysis):
    cfg = fxparam.SuPar(
        density=0.25,
        overrides={"re:.*\\.attn\\..*": 0.5, "re:blocks\\.0\\..*": 0.125, "blocks.1.attn.proj.weight": 0.75},
    )
    plan = build_plan(tiny_analysis, fxparam.compose(fxparam.MuP(base_width=64), cfg))
    got = {fqn: mp.density for fqn, mp in plan.masks.items()}
    assert got == {
        "blocks.0.attn.qkv.weight": 0.5,  # first matching pattern wins over the later one
        "blocks.0.attn.proj.weight": 0.5,
        "blocks.0.mlp.fc.weight": 0.125,
        "blocks.0.mlp.proj.weight": 0.125,
        "blocks.1.attn.qkv.weight": 0.5,
        "blocks.1.attn.proj.weight": 0.75,  # exact FQN first
        "blocks.1.mlp.fc.weight": 0.25,
        "blocks.1.mlp.proj.weight": 0.25,
    }
    assert all(plan.params[f].density == d for f, d in got.items())


def test_patterns_use_fullmatch(tiny_analysis):
    cfg = fxparam.SuPar(density=0.5, overrides={"re:mlp": 0.25})  # would `search` the mlp weights
    with pytest.raises(fxparam.ConfigError, match="overrides key 're:mlp' matches no maskable weight"):
        build_plan(tiny_analysis, cfg)


def test_supar_alone_masks_without_correction(tiny_analysis):
    plan = build_plan(tiny_analysis, fxparam.SuPar(density=0.25))
    identity = build_plan(tiny_analysis, fxparam.compose())  # nothing: the model's own init and LR
    for fqn, p in plan.params.items():
        expect = identity.params[fqn].model_copy(update={"density": 0.25} if fqn in HIDDEN else {})
        assert p == expect
    assert set(plan.masks) == set(HIDDEN)
    assert any("masks only" in n for n in plan.notes)


def test_sp_plus_supar_corrects_the_sp_rules(tiny_analysis):
    sp = fxparam.SP(init_std=0.03)
    plan = build_plan(tiny_analysis, fxparam.compose(sp, fxparam.SuPar(density=0.25)))
    p = plan.params[HIDDEN[0]]
    assert (p.init_std, p.lr_mult, p.sgd_lr_mult) == (pytest.approx(0.06), 4.0, 4.0)
    assert plan.params["wte.weight"] == build_plan(tiny_analysis, sp).params["wte.weight"]


def test_correct_false_is_masks_on_the_width_rules(tiny_analysis):
    base = fxparam.MuP(base_width=32)
    dense = build_plan(tiny_analysis, base)
    plan = build_plan(tiny_analysis, fxparam.compose(base, fxparam.SuPar(density=0.25, correct=False)))
    assert set(plan.masks) == set(HIDDEN)
    for fqn, p in plan.params.items():
        assert p == dense.params[fqn].model_copy(update={"density": 0.25} if fqn in HIDDEN else {})


def test_order_in_composition_does_not_matter(tiny_analysis):
    a = build_plan(tiny_analysis, fxparam.compose(fxparam.SuPar(density=0.5), fxparam.MuP(base_width=32)))
    b = build_plan(tiny_analysis, fxparam.compose(fxparam.MuP(base_width=32), fxparam.SuPar(density=0.5)))
    assert a.params == b.params and a.masks == b.masks


def test_string_front_door_and_plan_json_round_trip():
    model = GPT(TINY)
    plan = fxparam.plan(model, "completep+supar", base_width=32, base_depth=1, density=0.25, seed=9)
    assert plan.passes == ["CompleteP", "SuPar"]
    assert {mp.seed for mp in plan.masks.values()} == {9}
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.fingerprint() == plan.fingerprint()
    assert config_from_json(plan.config) == resolve_config(
        "completep+supar", base_width=32, base_depth=1, density=0.25, seed=9
    )


@pytest.mark.parametrize(
    "cfg",
    [
        fxparam.SuPar(density=0.5, correct=False),
        fxparam.SuPar(density=0.125, store_masks=True, overrides={"a": 1.0}),
    ],
)
def test_config_json_round_trip(cfg):
    assert config_from_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(density=0.0), "density"),
        (dict(density=-0.5), "density"),
        (dict(density=1.0001), "density"),
        (dict(density=float("nan")), "density"),
        (dict(density=0.5, overrides={"re:(": 0.5}), "overrides"),
        (dict(density=0.5, overrides={"re:": 0.5}), "overrides"),
        (dict(density=0.5, overrides={"blocks.0.mlp.fc.weight": 0.0}), "overrides"),
        (dict(density=0.5, overrides={"blocks.0.mlp.fc.weight": 2.0}), "overrides"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_field(kwargs, fragment):
    with pytest.raises(fxparam.ConfigError, match=fragment):
        fxparam.SuPar(**kwargs)


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("blocks.0.mlp.fc.wieght", "matches no maskable weight"),  # typo
        ("wte.weight", "embedding parameter outside the blocks"),
        ("blocks.0.ln_1.weight", "vector parameter"),
        ("re:lm_head.*", "matches no maskable weight"),
    ],
)
def test_override_matching_nothing_maskable_is_an_error(tiny_analysis, key, fragment):
    cfg = fxparam.compose(fxparam.MuP(base_width=64), fxparam.SuPar(density=0.5, overrides={key: 0.5}))
    with pytest.raises(fxparam.ConfigError, match=f"overrides key .*{fragment}") as info:
        build_plan(tiny_analysis, cfg)
    assert "in pass SuPar" in str(info.value)


def test_tied_swiglu_gpt_masks_gate_not_tied_readout():
    model = GPT(TINY.replace(mlp="swiglu", tie_embeddings=True))
    plan = fxparam.plan(model, "mup+supar", base_width=64, density=0.5)
    assert sorted(plan.masks) == sorted(HIDDEN + ["blocks.0.mlp.gate.weight", "blocks.1.mlp.gate.weight"])
    assert plan.params["lm_head.weight"].density == 1.0 and plan.params["wte.weight"].density == 1.0


def test_hf_gpt2_masks_its_conv1d_hidden_weights():
    model = hf_model("gpt2", n_layer=2)
    plan = fxparam.plan(model, "mup+supar", base_width=64, density=0.5)
    assert plan.masks and all(".h." in fqn and fqn.endswith("weight") for fqn in plan.masks)
    assert len(plan.masks) == 8  # c_attn, c_proj (attn), c_fc, c_proj (mlp) per block
    fxparam.apply_plan(model, plan, init=True)
    for fqn, mask in fxparam.lowering.masks.masks_of(model).items():
        assert mask.shape == model.get_parameter(fqn).shape


def test_summary_shows_masks(tiny_analysis):
    plan = build_plan(tiny_analysis, fxparam.compose(fxparam.MuP(base_width=64), fxparam.SuPar(density=0.25)))
    text = plan.summary()
    assert "masks (SuPar): 8 parameters" in text
    row = next(line for line in text.splitlines() if line.startswith("blocks.") and ".mlp.fc.weight" in line)
    assert "0.25" in row
    assert "masks" not in build_plan(tiny_analysis, fxparam.MuP(base_width=64)).summary()
