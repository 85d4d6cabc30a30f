"""Issue 16 case 1: one unit system from recipe to optimizer.

The recipe's ``lr``/``weight_decay`` are base values in ``fxparam.optimizer``'s units, so the hidden AdamW
timescale realized by the optimizer's own param groups, ``tau = B / (lr_group * wd_group * D)``
(shared/reference/hp_laws.md), equals the recipe's -- and the Power Lines optimum ``1.084 * TPP**-0.527``
computed here by hand.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fxparam
from fxparam.models import GPT, GPTConfig
from fxparam.recipes import recommend

N, D, SEQ = 610e6, 48.5e9, 2048  # the 610M example of hp_laws.md, m_d = 2048 / 256 = 8


@pytest.fixture(scope="module")
def model_md8() -> torch.nn.Module:
    m = GPT(GPTConfig(width=128, depth=2, head_dim=16))
    model = fxparam.transform(m, "completep", base_width=16, base_depth=2)
    assert fxparam.plan_of(model).m_d == 8
    return model


def _hidden_groups(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[dict]:
    plan = fxparam.plan_of(model)
    hidden = {n for n, p in plan.params.items() if p.role == "hidden" and not p.tied_to}
    out = [g for g in opt.param_groups if set(g["param_names"]) & hidden]
    assert out and all(set(g["param_names"]) <= hidden for g in out)
    return out


def test_recipe_into_optimizer_realizes_the_recipes_hidden_tau(model_md8: torch.nn.Module) -> None:
    r = recommend(params=N, tokens=D, seq_len=SEQ, base_lr=1.62e-2, width_multiplier=8)
    tau_power_lines = 1.084 * (D / N) ** -0.527  # by hand, hp_laws.md
    assert r.tau == pytest.approx(tau_power_lines, rel=1e-9)
    opt = fxparam.optimizer(model_md8, torch.optim.AdamW, recipe=r)
    for g in _hidden_groups(model_md8, opt):
        tau = r.batch_tokens / (g["lr"] * g["weight_decay"] * r.tokens)
        assert tau == pytest.approx(tau_power_lines, rel=1e-9)
        assert g["lr"] == pytest.approx(1.62e-2 / 8)
    # the same numbers when the user copies the fields by hand
    opt2 = fxparam.optimizer(model_md8, torch.optim.AdamW, lr=r.lr, weight_decay=r.weight_decay)
    assert [g["weight_decay"] for g in opt2.param_groups] == [g["weight_decay"] for g in opt.param_groups]
    # every recipe group table row matches the optimizer group of that role (effective values)
    rows = {g.name: g for g in r.groups}
    plan = fxparam.plan_of(model_md8)
    for g in opt.param_groups:
        roles = {plan.rules_for(n).role for n in g["param_names"]}
        if roles == {"hidden"}:
            assert (g["lr"], g["weight_decay"]) == pytest.approx((rows["hidden"].lr, rows["hidden"].weight_decay))
        if roles == {"embedding"}:
            assert (g["lr"], g["weight_decay"]) == pytest.approx(
                (rows["embedding"].lr, rows["embedding"].weight_decay)
            )


def test_negative_control_effective_decay_as_base_is_8x_too_strong(model_md8: torch.nn.Module) -> None:
    """The issue's bug: passing the hidden weights' effective lambda as the base one gives tau / 8."""
    r = recommend(params=N, tokens=D, seq_len=SEQ, base_lr=1.62e-2, width_multiplier=8)
    opt = fxparam.optimizer(model_md8, torch.optim.AdamW, lr=r.lr, weight_decay=r.hidden_weight_decay)
    g = _hidden_groups(model_md8, opt)[0]
    tau = r.batch_tokens / (g["lr"] * g["weight_decay"] * r.tokens)
    assert tau == pytest.approx(r.tau / 8, rel=1e-9)  # 0.0135 vs 0.108, as reported


def test_recipe_units_and_errors(model_md8: torch.nn.Module) -> None:
    r = recommend(params=N, tokens=D, base_lr=1.62e-2, width_multiplier=8, batch_size=504, weight_decay=0.1 / 8)
    assert (r.lr, r.weight_decay) == pytest.approx((1.62e-2, 0.0125))
    assert (r.hidden_lr, r.hidden_weight_decay) == pytest.approx((2.025e-3, 0.1))
    assert "fxparam.optimizer(lr=)" in r.table() and "fxparam.optimizer(weight_decay=)" in r.table()
    with pytest.raises(fxparam.OptimizerError, match="not both"):
        fxparam.optimizer(model_md8, torch.optim.AdamW, lr=1e-3, recipe=r)
    with pytest.raises(fxparam.OptimizerError, match="coupled decay"):
        fxparam.optimizer(model_md8, torch.optim.AdamW, recipe=r, independent_wd=True)
    with pytest.raises(fxparam.OptimizerError, match="lr="):
        fxparam.optimizer(model_md8, torch.optim.AdamW)
    r4 = recommend(params=N, tokens=D, base_lr=1.62e-2, width_multiplier=4)
    with pytest.warns(UserWarning, match="width_multiplier=4"):
        fxparam.optimizer(model_md8, torch.optim.AdamW, recipe=r4)
    with pytest.raises(ValueError, match="version 1"):
        type(r).model_validate({**r.model_dump(), "version": 1})


def test_recipe_on_a_depth_mup_plan_warns_with_the_realized_tau() -> None:
    """CompleteP alpha=0.5 at m_L=4: hidden LR eta/m_d * m_L**-0.5, decay lambda*m_d (parameterizations.md), so
    the shrink is eta*lambda/2 and the realized tau twice the recipe's -- the recipe has no depth input."""
    m = GPT(GPTConfig(width=64, depth=8, head_dim=16))
    model = fxparam.transform(m, "completep", base_width=16, base_depth=2, alpha=0.5)
    r = recommend(params=50e6, tokens=1e9, seq_len=512, base_lr=1e-2, width_multiplier=4)
    with pytest.warns(UserWarning, match="timescale") as record:
        opt = fxparam.optimizer(model, torch.optim.AdamW, recipe=r)
    g = _hidden_groups(model, opt)[0]
    assert r.batch_tokens / (g["lr"] * g["weight_decay"] * r.tokens) == pytest.approx(2 * r.tau)
    suggested = float(str(record[0].message).split("weight_decay=")[1].split()[0])
    assert suggested == pytest.approx(2 * r.weight_decay, rel=1e-3)  # lambda * sqrt(m_L), by hand
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=r.lr, weight_decay=2 * r.weight_decay)
    g = _hidden_groups(model, opt)[0]
    assert r.batch_tokens / (g["lr"] * g["weight_decay"] * r.tokens) == pytest.approx(r.tau)


def test_recipe_on_completep_alpha_1_is_silent(model_md8: torch.nn.Module) -> None:
    r = recommend(params=N, tokens=D, seq_len=SEQ, base_lr=1.62e-2, width_multiplier=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxparam.optimizer(model_md8, torch.optim.AdamW, recipe=r)
