"""Issue 16 cases 2-3: the SGD column, readout eps and bias init against the muP tables.

Expected values are written out from shared/reference/parameterizations.md (Tensor Programs V Table 8 for
SGD; microsoft/mup ``MuSGD`` for the coupled decay; the CompleteP reference code for the readout eps), not
read from fxparam's plan.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.models import GPT, GPTConfig

ETA, LAM, EPS = 0.1, 1e-3, 1e-8


def mlp(width: int) -> nn.Sequential:
    """Input layer (embedding role), one hidden matmul, a readout with a bias of 10 (no width dim)."""
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def _transformed(width: int, config: str = "mup") -> nn.Module:
    kwargs = {"base_width": 64} if config == "mup" else {}
    return fxparam.transform(mlp(width), config, example_inputs=(torch.randn(2, 16),), **kwargs)


def _group_of(opt: torch.optim.Optimizer, fqn: str) -> dict:
    return next(g for g in opt.param_groups if fqn in g["param_names"])


@pytest.mark.parametrize("width", [64, 256, 512])
def test_sgd_column_of_the_table(width: int) -> None:
    m_d = width / 64
    opt = fxparam.optimizer(_transformed(width), torch.optim.SGD, lr=ETA, weight_decay=LAM)
    table = {  # fqn: (SGD LR, per-step shrink lr*wd)  -- Table 8 / MuSGD, written out by hand
        "0.weight": (ETA * m_d, ETA * LAM),  # input layer (embedding role): eta*m_d; lr*wd as under Adam
        "0.bias": (ETA * m_d, 0.0),  # width-sized vector: eta*m_d, no decay
        "2.weight": (ETA, ETA * LAM),  # hidden: eta constant; lr*wd width-invariant (was eta*lam*m_d)
        "4.weight": (ETA * m_d, ETA * LAM),  # readout: eta*m_d with the 1/m_d forward multiplier
        "4.bias": (ETA, 0.0),  # readout bias has no width dimension: eta (was eta*m_d)
    }
    for fqn, (lr, shrink) in table.items():
        g = _group_of(opt, fqn)
        assert g["lr"] == pytest.approx(lr), fqn
        assert g["lr"] * g["weight_decay"] == pytest.approx(shrink), fqn


def test_sgd_hidden_shrink_is_width_invariant_and_the_old_rule_is_not() -> None:
    shrinks, old = [], []
    for width in (64, 128, 256, 512):
        g = _group_of(fxparam.optimizer(_transformed(width), torch.optim.SGD, lr=ETA, weight_decay=LAM), "2.weight")
        shrinks.append(g["lr"] * g["weight_decay"])
        old.append(g["lr"] * LAM * width / 64)  # negative control: Adam's wd*m_d applied to SGD
    assert max(shrinks) == pytest.approx(min(shrinks))
    assert old[-1] / old[0] == pytest.approx(8.0)


@pytest.mark.parametrize("width", [128, 512])
def test_adam_eps_of_untied_readout_is_eps_over_m_d_like_the_embedding(width: int) -> None:
    m_d = width / 64
    opt = fxparam.optimizer(_transformed(width), torch.optim.AdamW, lr=1e-3, eps=EPS)
    assert _group_of(opt, "4.weight")["eps"] == pytest.approx(EPS / m_d)  # CompleteP reference code
    assert _group_of(opt, "0.weight")["eps"] == pytest.approx(EPS / m_d)
    gpt = fxparam.transform(GPT(GPTConfig(width=width, depth=2, head_dim=16)), "mup", base_width=64)
    opt = fxparam.optimizer(gpt, torch.optim.AdamW, lr=1e-3, eps=EPS)
    assert _group_of(opt, "lm_head.weight")["eps"] == pytest.approx(EPS / m_d)
    assert _group_of(opt, "wte.weight")["eps"] == pytest.approx(EPS / m_d)


def test_biases_get_the_tables_zero_init_and_do_not_shrink_with_width() -> None:
    """Table: biases init 0. PyTorch's default U(+-1/sqrt(fan_in)) (the control) shrinks as width^-1/2."""
    default_std = {}
    for width in (64, 512):
        torch.manual_seed(0)
        default_std[width] = mlp(width)[2].bias.std().item()
        model = _transformed(width)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                assert torch.count_nonzero(p) == 0, name
        gpt = fxparam.transform(GPT(GPTConfig(width=width, depth=2, head_dim=16)), "mup", base_width=64)
        for name, p in gpt.named_parameters():
            if name.endswith("ln_1.weight"):
                assert torch.all(p == 1), name  # norm gains keep their 1
    ratio = default_std[512] / default_std[64]
    assert ratio == pytest.approx((64 / 512) ** 0.5, rel=0.25)  # the control does shrink


@pytest.mark.slow
def test_sgd_coordinate_check_flat_for_mup_and_sp_grows() -> None:
    def make(width: int) -> nn.Module:
        return GPT(GPTConfig(width=width, depth=2, head_dim=16))

    kw = dict(widths=[64, 128, 256], optimizer=torch.optim.SGD, lr=0.5, seeds=(0,), steps=2, batch_size=4)
    mup = fxparam.coord_check(make, config="mup", **kw)
    verdict = mup.verdict()
    assert verdict.invariant, verdict.table
    sp = fxparam.coord_check(make, config="sp", **kw)
    assert sp.max_growth() > 0.6
    assert not sp.verdict().invariant


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_completep_sgd_depth_factor(alpha: float) -> None:
    """CompleteP under SGD: hidden and in-block vector LR x m_L^(2 alpha - 1).

    Derivation (not fxparam's output): with branch multiplier m_L^-alpha, a block weight's gradient
    scales as m_L^-alpha; the per-block update must be Theta(1/L) = Theta(m_L^-1) in its effect on the
    stream, which the multiplier scales by another m_L^-alpha, so lr * m_L^-2alpha ~ m_L^-1, i.e.
    lr ~ m_L^(2 alpha - 1): constant at alpha = 1/2 (Depth-muP for SGD, Tensor Programs VI), x m_L at alpha = 1.
    The Adam rule m_L^(alpha - 1) is the negative control (it differs at both alphas).
    """
    base_depth, depth = 2, 8
    m_L = depth / base_depth
    model = fxparam.transform(GPT(GPTConfig(width=64, depth=depth)), fxparam.CompleteP(
        base_width=64, base_depth=base_depth, alpha=alpha))
    opt = fxparam.optimizer(model, torch.optim.SGD, lr=ETA)
    expected = m_L ** (2 * alpha - 1)
    adam_rule = m_L ** (alpha - 1)
    assert expected != pytest.approx(adam_rule)
    hidden = _group_of(opt, "blocks.0.attn.qkv.weight")
    assert hidden["lr"] == pytest.approx(ETA * expected)
    gain = _group_of(opt, "blocks.0.ln_1.weight")  # in-block width-sized vector: eta * m_d * depth factor (m_d = 1)
    assert gain["lr"] == pytest.approx(ETA * expected)
