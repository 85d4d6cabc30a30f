"""Issue 16 item 4: Muon for hidden matrices + AdamW for the rest, with the muP rule for Muon (docs/muon.md).

Expected values from first principles: the spectral condition (Yang, Simon & Bernstein 2023) asks for a
hidden update of spectral norm Theta(1) across width; torch's Muon applies ``lr * 0.2 * sqrt(max(A, B))``
times an orthogonal matrix under ``match_rms_adamw``, so the rule is ``lr = eta / sqrt(m_d)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fxparam
import fxparam.schedulers
from fxparam.models import GPT, GPTConfig

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
X = torch.randint(0, 256, (4, 16))


def _model(width: int, config: str = "mup") -> torch.nn.Module:
    kwargs = {"base_width": 64} if config == "mup" else {}
    return fxparam.transform(GPT(GPTConfig(width=width, depth=2, head_dim=16)), config, **kwargs)


def test_groups_muon_for_hidden_matrices_adamw_for_the_rest() -> None:
    model = _model(256)  # m_d = 4
    opt = fxparam.optimizer(model, torch.optim.Muon, lr=2e-2, weight_decay=0.1, eps=1e-8)
    assert isinstance(opt, fxparam.optim.MuonAdamW)
    plan = fxparam.plan_of(model)
    muon_names = {n for g in opt.muon.param_groups for n in g["param_names"]}
    hidden = {n for n, p in plan.params.items() if p.role == "hidden" and not p.tied_to}
    assert muon_names == hidden
    adam_names = {n for g in opt.adam.param_groups for n in g["param_names"]}
    assert not adam_names & muon_names and adam_names | muon_names == {n for n, _ in model.named_parameters()}
    for g in opt.muon.param_groups:
        assert g["lr"] == pytest.approx(2e-2 / math.sqrt(4))  # eta / sqrt(m_d)
        assert g["lr"] * g["weight_decay"] == pytest.approx(2e-2 * 0.1)  # shrink as under AdamW: eta * lambda
        assert g["adjust_lr_fn"] == "match_rms_adamw"
    emb = next(g for g in opt.adam.param_groups if "wte.weight" in g["param_names"])
    assert (emb["lr"], emb["eps"]) == pytest.approx((2e-2, 1e-8 / 4))
    orig = fxparam.optimizer(model, torch.optim.Muon, lr=2e-2, adjust_lr_fn="original")
    assert all(g["lr"] == pytest.approx(2e-2) for g in orig.muon.param_groups)  # 'original': no width factor
    with pytest.raises(fxparam.OptimizerError, match="adjust_lr_fn"):
        fxparam.optimizer(model, torch.optim.Muon, lr=2e-2, adjust_lr_fn="mystery")


def test_steps_schedulers_and_state_dict() -> None:
    model = _model(128)
    opt = fxparam.optimizer(model, torch.optim.Muon, lr=1e-2)
    sched = fxparam.schedulers.one_cycle(opt, max_lr=1e-2, total_steps=10)
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model(X, X)[1].backward()
        opt.step()
        sched.step()
    assert not torch.equal(before, model.blocks[0].attn.qkv.weight)
    assert fxparam.schedulers.ratios_kept(opt)
    again = fxparam.optimizer(model, torch.optim.Muon, lr=1e-2)
    again.load_state_dict(opt.state_dict())
    assert again.muon.state_dict()["state"].keys() == opt.muon.state_dict()["state"].keys()


def _update_spectral_norms(width: int) -> dict[bool, float]:
    """Spectral norm of one Muon update of a hidden matrix, with the rule and without (control)."""
    torch.manual_seed(0)
    model = _model(width)
    plan = fxparam.plan_of(model)
    w = model.blocks[0].mlp.fc.weight
    before = w.detach().clone()
    out = {}
    for rule in (True, False):
        plan.m_d = width / 64 if rule else 1.0  # control: the same Muon LR at every width
        opt = fxparam.optimizer(model, torch.optim.Muon, lr=1e-2, momentum=0.0, nesterov=False)
        with torch.no_grad():
            w.copy_(before)
        opt.zero_grad()
        model(X, X)[1].backward()
        opt.step()
        out[rule] = torch.linalg.matrix_norm(w.detach() - before, ord=2).item()
    plan.m_d = width / 64
    return out


def test_hidden_update_spectral_norm_is_width_invariant_and_the_control_grows() -> None:
    widths = [64, 128, 256, 512]
    norms = [_update_spectral_norms(w) for w in widths]
    slope = {rule: np.polyfit(np.log2(widths), np.log2([n[rule] for n in norms]), 1)[0] for rule in (True, False)}
    assert abs(slope[True]) < 0.05  # spectral condition: Theta(1)
    assert slope[False] == pytest.approx(0.5, abs=0.05)  # 0.2 * sqrt(max(A, B)) grows as sqrt(width)


@pytest.mark.slow
def test_muon_coordinate_check_flat_and_control_not() -> None:
    def make(width: int) -> torch.nn.Module:
        return GPT(GPTConfig(width=width, depth=2, head_dim=16))

    kw = dict(widths=[64, 128, 256, 512], optimizer=torch.optim.Muon, lr=3e-2, seeds=(0,), steps=2,
              batch_size=4, seq_len=16, config="mup")
    rule = fxparam.coord_check(make, **kw)
    control = fxparam.coord_check(make, edit_plan=lambda p: p.model_copy(update={"m_d": 1.0}), **kw)
    verdict = rule.verdict()
    assert verdict.invariant, verdict.table
    grow_rule, grow_control = rule.max_growth(stat="delta"), control.max_growth(stat="delta")
    assert grow_rule < 0.15, grow_rule
    # the control's hidden updates grow as sqrt(width); diluted by the (planned) AdamW parts in the activations
    assert grow_control > 0.2 and grow_control > grow_rule + 0.15, (grow_rule, grow_control)


def test_defaults_lr_is_the_base_lr_for_schedulers_that_read_it() -> None:
    """transformers' cosine_with_min_lr reads optimizer.defaults['lr'] (KeyError on MuonAdamW before)."""
    model = _model(256)  # m_d = 4
    opt = fxparam.optimizer(model, torch.optim.Muon, lr=2e-2)
    assert opt.defaults["lr"] == pytest.approx(2e-2)
    transformers = pytest.importorskip("transformers")
    sched = transformers.get_scheduler("cosine_with_min_lr", opt, num_warmup_steps=0, num_training_steps=4,
                                       scheduler_specific_kwargs={"min_lr": 2e-4})
    for _ in range(4):
        opt.step()
        sched.step()
    # end of the cosine: every group at min_lr/base = 1/100 of its peak; Muon hidden peak eta/sqrt(m_d)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(2e-2 / math.sqrt(4) / 100)
    assert fxparam.optim.ratios_kept(opt)


def test_state_is_the_inner_optimizers_state() -> None:
    """opt.state reaches both inner states (Lightning moves `optimizer.state` to the device on restore)."""
    model = _model(128)
    opt = fxparam.optimizer(model, torch.optim.Muon, lr=1e-2)
    model(X, X)[1].backward()
    opt.step()
    stepped = {p for g in opt.param_groups for p in g["params"] if p.grad is not None}
    assert set(opt.state) == stepped == set(opt.muon.state) | set(opt.adam.state)
    hidden = opt.muon.param_groups[0]["params"][0]
    emb = model.wte.weight
    for p in (hidden, emb):  # what lightning.fabric's _optimizer_to_device does, with a copy for a move
        opt.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
    assert opt.state[hidden] is opt.muon.state[hidden] and hidden not in opt.adam.state
    assert opt.state[emb] is opt.adam.state[emb] and emb not in opt.muon.state
    opt.load_state_dict(opt.state_dict())  # replaces the inner state dicts: the view follows
    assert set(opt.state) == stepped
    model(X, X)[1].backward()
    opt.step()
