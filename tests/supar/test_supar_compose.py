"""SμPar composed with CompleteP and GNS; inspect and plan_of on masked models."""

from __future__ import annotations

import pytest
import torch
from conftest import HIDDEN, TINY

import fxparam
from fxparam.lowering.masks import masks_of
from fxparam.models import GPT


def _exact(model: torch.nn.Module) -> bool:
    return all(bool((model.get_parameter(k)[~m] == 0).all()) for k, m in masks_of(model).items())


def test_completep_plus_supar_front_door_and_optimizer_groups():
    torch.manual_seed(0)
    model = fxparam.transform(
        GPT(TINY.replace(depth=4)), "completep+supar", base_width=32, base_depth=2, density=0.25
    )
    plan = fxparam.plan_of(model)
    assert plan.passes == ["CompleteP", "SuPar"] and len(plan.masks) == 16
    hidden = plan.params["blocks.3.mlp.fc.weight"]
    # m_d = 2, m_L = 2, alpha = 1: eta / (m_d rho), sigma / sqrt(m_d rho); eps / (m_d m_L) unchanged
    assert hidden.lr_mult == pytest.approx(1 / (2 * 0.25))
    assert hidden.init_std == pytest.approx(0.02 / (2 * 0.25) ** 0.5)
    assert hidden.eps_mult == pytest.approx(1 / 4) and hidden.wd_mult == pytest.approx(2)
    w = model.get_parameter("blocks.3.mlp.fc.weight")
    kept = w[masks_of(model)["blocks.3.mlp.fc.weight"]]
    assert kept.std().item() == pytest.approx(hidden.init_std, rel=0.05)  # re-init then masked
    assert "blocks.3.mlp.proj" in plan.multipliers  # depth branch multiplier untouched
    groups = fxparam.param_groups(model, lr=1e-2, weight_decay=0.1)
    lr_of = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr_of["blocks.3.mlp.fc.weight"] == pytest.approx(1e-2 * 2.0)
    assert lr_of["wte.weight"] == pytest.approx(1e-2)


def test_completep_plus_supar_plus_gns():
    gns = pytest.importorskip("fxparam.gns", reason="the GNS package is not in this tree yet")
    if not hasattr(gns, "swap_norms"):
        pytest.skip(
            "fxparam.gns.swap_norms does not exist yet (GNS pass in progress): nothing to compose with"
        )
    torch.manual_seed(0)
    model = fxparam.transform(
        GPT(TINY), "completep+supar+gns", base_width=32, base_depth=1, density=0.5, example_inputs=None
    )
    plan = fxparam.plan_of(model)
    assert plan.passes == ["CompleteP", "SuPar", "GNS"]
    assert sorted(plan.masks) == sorted(HIDDEN) and plan.norm_swaps
    assert list(model.state_dict()) == list(GPT(TINY).state_dict())
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    for step in range(5):
        x = torch.randint(0, TINY.vocab, (4, TINY.seq_len), generator=torch.Generator().manual_seed(step))
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        assert _exact(model)


def test_inspect_of_a_masked_model_is_unaffected(make_tiny, tiny_analysis):
    model = make_tiny(fxparam.compose(fxparam.MuP(base_width=32), fxparam.SuPar(density=0.25)))
    again = fxparam.inspect(model)
    assert again.params == tiny_analysis.params
    assert (again.width, again.depth, again.blocks) == (
        tiny_analysis.width,
        tiny_analysis.depth,
        tiny_analysis.blocks,
    )
    assert again.residuals == tiny_analysis.residuals and again.attention == tiny_analysis.attention
    assert _exact(model)


def test_plan_of_shows_density_per_parameter(make_tiny):
    model = make_tiny(
        fxparam.compose(
            fxparam.MuP(base_width=32), fxparam.SuPar(density=0.25, overrides={"re:.*attn.*": 0.5})
        )
    )
    plan = fxparam.plan_of(model)
    got = {fqn: p.density for fqn, p in plan.params.items() if p.density < 1}
    assert got == {f: (0.5 if ".attn." in f else 0.25) for f in HIDDEN}
    assert "masks (SuPar): 8 parameters, density 0.25, 0.5, seed 0" in plan.summary()
