import warnings

import pytest
import torch

import fxparam
from fxparam.models import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    m = GPT(GPTConfig(width=128, depth=4, head_dim=16, tie_embeddings=True))
    return fxparam.transform(m, "completep", base_width=32, base_depth=2, alpha=0.5)


@pytest.mark.parametrize("opt_cls", [torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD])
def test_effective_values_equal_the_plan(model, opt_cls):
    lr, wd, eps = 1e-2, 0.1, 1e-8
    kwargs = {"momentum": 0.9} if opt_cls is torch.optim.SGD else {}
    opt = fxparam.optimizer(model, opt_cls, lr=lr, weight_decay=wd, eps=eps, **kwargs)
    plan = fxparam.plan_of(model)
    rule = "sgd" if opt_cls is torch.optim.SGD else "adam"
    seen = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            assert id(p) not in seen, "a parameter is in two groups"
            seen[id(p)] = group
            rules = plan.rules_for(names[id(p)])
            want_lr = lr * (rules.sgd_lr_mult if rule == "sgd" else rules.lr_mult)
            assert group["lr"] == pytest.approx(want_lr)
            # SGD (MuSGD): the shrink lr*wd equals the Adam rule's, so wd is rescaled by lr_mult/sgd_lr_mult
            sgd = rules.lr_mult / rules.sgd_lr_mult if rule == "sgd" else 1.0
            assert group["weight_decay"] == pytest.approx(wd * rules.wd_mult * sgd)
            if rule == "adam":
                assert group["eps"] == pytest.approx(eps * rules.eps_mult)
            else:
                assert "eps" not in group
    assert set(seen) == {id(p) for p in model.parameters()}  # every parameter exactly once


def test_groups_are_not_uniform_under_completep(model):
    groups = fxparam.param_groups(model, lr=1e-2, weight_decay=0.1)
    assert len({g["lr"] for g in groups}) > 1
    # hidden weights: lr/m_d * m_L^(alpha-1) with m_d=4, m_L=2, alpha=0.5
    hidden = next(g for g in groups if "blocks.0.attn.qkv.weight" in g["param_names"])
    assert hidden["lr"] == pytest.approx(1e-2 / 4 * 2**-0.5)


def test_unknown_optimizer_rule_is_an_error(model):
    with pytest.raises(fxparam.OptimizerError, match="rule='adam'"):
        fxparam.optimizer(model, torch.optim.Adagrad, lr=1e-2)
    opt = fxparam.optimizer(model, torch.optim.Adagrad, lr=1e-2, rule="adam", eps=None)
    assert len(opt.param_groups) > 1


def test_untransformed_model_is_an_error():
    with pytest.raises(fxparam.LoweringError, match="fxparam.transform"):
        fxparam.param_groups(GPT(GPTConfig(width=64, depth=1)), lr=1e-3)


def test_plain_optimizer_on_transformed_model_warns():
    m = fxparam.transform(GPT(GPTConfig(width=64, depth=2, head_dim=16)), "mup", base_width=32)
    x = torch.randint(0, 256, (2, 8))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(x, x)[1].backward()
    with pytest.warns(UserWarning, match="standard parameterization"):
        opt.step()
    good = fxparam.optimizer(m, torch.optim.AdamW, lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good.step()


def test_independent_weight_decay_holds_lr_times_wd(model):
    groups = fxparam.param_groups(model, lr=1e-2, weight_decay=1e-4, independent_wd=True)
    for g in groups:
        if g["weight_decay"] > 0:
            assert g["lr"] * g["weight_decay"] == pytest.approx(1e-4)
