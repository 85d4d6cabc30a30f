"""Review R16 of issue 16: optimizer families beyond AdamW/SGD and schedulers on Muon.

Expected values come from the optimizers' update equations (torch docs) and the muP table
(shared/reference/parameterizations.md), computed here by hand, not read from fxparam.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fxparam
import fxparam.schedulers as fxs
from fxparam.models import GPT, GPTConfig
from fxparam.optim import PlanLRWarning, ratios_kept

ETA, LAM = 1e-2, 0.1
M_D = 4  # width 64 / base 16


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return fxparam.transform(GPT(GPTConfig(width=64, depth=2, head_dim=16)), "mup", base_width=16)


def test_adam_l2_decay_is_not_the_shrink_lr_wd() -> None:
    """Why the warning: with a zero gradient, one torch Adam(L2) step moves p by lr*sign(p) (the decay is
    normalised), AdamW by lr*wd*p -- only the latter is the shrink the muP table's lambda*m_d keeps invariant."""
    lr, wd, tiny_eps = 1e-2, 0.1, 1e-12
    for cls, want in ((torch.optim.Adam, lambda p: p - lr * torch.sign(p)), (torch.optim.AdamW, lambda p: p * (1 - lr * wd))):
        p = torch.nn.Parameter(torch.tensor([2.0, -0.5]))
        opt = cls([p], lr=lr, weight_decay=wd, eps=tiny_eps)
        p.grad = torch.zeros_like(p)
        start = p.detach().clone()
        opt.step()
        assert torch.allclose(p.detach(), want(start), atol=1e-7), cls.__name__


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax])
def test_l2_coupled_adam_family_with_weight_decay_warns(model: torch.nn.Module, opt_cls: type) -> None:
    with pytest.warns(UserWarning, match="L2"):
        fxparam.optimizer(model, opt_cls, lr=ETA, weight_decay=LAM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxparam.optimizer(model, opt_cls, lr=ETA)  # no decay: nothing to warn about
        if opt_cls is not torch.optim.Adamax:  # decoupled decay is AdamW's shrink
            fxparam.optimizer(model, opt_cls, lr=ETA, weight_decay=LAM, decoupled_weight_decay=True)
        fxparam.optimizer(model, torch.optim.AdamW, lr=ETA, weight_decay=LAM)


def test_recipe_with_l2_adam_is_refused(model: torch.nn.Module) -> None:
    r = fxparam.recipes.recommend(params=1e6, tokens=1e8, base_lr=ETA, width_multiplier=M_D, seq_len=16)
    with pytest.raises(fxparam.OptimizerError, match="decoupled"):
        fxparam.optimizer(model, torch.optim.Adam, recipe=r)


def test_adafactor_is_refused_loudly_and_runs_with_an_explicit_rule(model: torch.nn.Module) -> None:
    """torch Adafactor's step is max(eps2, RMS(p)) * min(lr, 1/sqrt(t)): no muP column applies."""
    with pytest.raises(fxparam.OptimizerError, match="relative step"):
        fxparam.optimizer(model, torch.optim.Adafactor, lr=ETA)
    opt = fxparam.optimizer(model, torch.optim.Adafactor, lr=ETA, rule="adam")  # user's own derivation
    assert all(g["eps"] == (None, 1e-3) for g in opt.param_groups)  # the class default, not a float
    x = torch.randint(0, 256, (2, 8))
    model(x, x)[1].backward()
    opt.step()  # used to fail: "cannot unpack non-iterable float object"
    opt.zero_grad()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("build", ["cyclic", "adapt_one_cycle"])
def test_cycling_schedulers_on_muon_keep_the_ratio(model: torch.nn.Module, build: str) -> None:
    opt = fxparam.optimizer(model, torch.optim.Muon, lr=ETA)
    if build == "cyclic":
        sched = fxs.cyclic(opt, base_lr=ETA / 10, max_lr=ETA, step_size_up=3)
    else:
        sched = fxs.adapt(torch.optim.lr_scheduler.OneCycleLR, opt, max_lr=ETA, total_steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanLRWarning)
        for _ in range(10):
            opt.step()
            sched.step()
    assert ratios_kept(opt)
    muon = opt.muon.param_groups[0]["lr"]
    emb = next(g["lr"] for g in opt.adam.param_groups if "wte.weight" in g["param_names"])
    assert muon / emb == pytest.approx(1 / math.sqrt(M_D))  # match_rms_adamw: hidden eta/sqrt(m_d), embedding eta
