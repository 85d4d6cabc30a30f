"""Masks survive state_dict round trips, saved plans, copies and device/dtype moves; keys unchanged."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import HIDDEN, TINY

import fxparam
from fxparam.lowering.masks import masks_of
from fxparam.models import GPT

SUPAR = fxparam.compose(fxparam.CompleteP(base_width=32, base_depth=1), fxparam.SuPar(density=0.25, seed=3))
STORED = fxparam.compose(
    fxparam.CompleteP(base_width=32, base_depth=1), fxparam.SuPar(density=0.25, seed=3, store_masks=True)
)


def _train(model: torch.nn.Module, steps: int = 3) -> torch.optim.Optimizer:
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    for step in range(steps):
        x = torch.randint(0, TINY.vocab, (4, TINY.seq_len), generator=torch.Generator().manual_seed(step))
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    return opt


def _same_masks(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ma, mb = masks_of(a), masks_of(b)
    return sorted(ma) == sorted(mb) == sorted(HIDDEN) and all(torch.equal(ma[k], mb[k]) for k in ma)


def _exact(model: torch.nn.Module) -> bool:
    return all(bool((model.get_parameter(k)[~m] == 0).all()) for k, m in masks_of(model).items())


def test_state_dict_keys_unchanged_and_masks_compact(make_tiny):
    plain = GPT(TINY)
    model = make_tiny(SUPAR)
    assert list(model.state_dict()) == list(plain.state_dict())
    for fqn, mask in masks_of(model).items():
        assert mask.dtype == torch.bool and mask.numel() == model.get_parameter(fqn).numel()
    buffers = dict(model.named_buffers())
    assert buffers["blocks.0.mlp.fc.weight_mask"] is masks_of(model)["blocks.0.mlp.fc.weight"]


@pytest.mark.parametrize("init", [False, True])
def test_round_trip_into_a_fresh_model_with_the_same_config(make_tiny, batch, init):
    model = make_tiny(SUPAR)
    opt = _train(model)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    fresh = make_tiny(SUPAR, init=init, seed=123)  # other torch seed: only the masks' seed matters
    assert _same_masks(model, fresh)
    fresh.load_state_dict(ckpt["model"])
    assert torch.equal(fresh(batch), model(batch))
    fresh_opt = fxparam.optimizer(fresh, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    fresh_opt.load_state_dict(ckpt["opt"])
    _train(fresh, steps=2)
    _train(model, steps=2)
    assert _exact(fresh) and torch.equal(fresh(batch), model(batch))


def test_round_trip_by_the_saved_plan(make_tiny, batch, tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_tiny(SUPAR)
    _train(model)
    (tmp_path / "plan.json").write_text(fxparam.plan_of(model).to_json())
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))

    fresh = fxparam.apply_plan(GPT(TINY), (tmp_path / "plan.json").read_text())  # init=False
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert _same_masks(model, fresh) and _exact(fresh)
    assert torch.equal(fresh(batch), model(batch))


def test_stored_masks_add_only_bool_keys_and_load_back(make_tiny, batch):
    model = make_tiny(STORED)
    keys = list(model.state_dict())
    plain = list(GPT(TINY).state_dict())
    added = [k for k in keys if k not in plain]
    assert sorted(added) == sorted(f"{k}_mask" for k in HIDDEN)
    assert [k for k in keys if k in plain] == plain  # order of the original keys kept
    sd = model.state_dict()
    assert all(sd[k].dtype == torch.bool for k in added)

    fresh = make_tiny(STORED, init=False, seed=9)
    with torch.no_grad():  # a stored mask wins over the re-derived one
        sd = {k: v.clone() for k, v in sd.items()}
        sd["blocks.0.mlp.fc.weight_mask"] = ~sd["blocks.0.mlp.fc.weight_mask"]
    fresh.load_state_dict(sd)
    assert torch.equal(masks_of(fresh)["blocks.0.mlp.fc.weight"], sd["blocks.0.mlp.fc.weight_mask"])
    assert _exact(fresh)


def test_a_dense_checkpoint_loaded_into_a_masked_model_is_masked(make_tiny):
    dense = make_tiny(fxparam.CompleteP(base_width=32, base_depth=1))
    model = make_tiny(SUPAR, init=False)
    model.load_state_dict(dense.state_dict())
    assert _exact(model)
    for fqn, m in masks_of(model).items():
        assert torch.equal(model.get_parameter(fqn)[m], dense.get_parameter(fqn)[m])


def test_load_with_assign_rehooks_the_new_parameters(make_tiny):
    model = make_tiny(SUPAR)
    fresh = make_tiny(SUPAR, init=False)
    fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    opt = _train(fresh)
    assert _exact(fresh)
    for fqn, m in masks_of(fresh).items():
        state = opt.state[fresh.get_parameter(fqn)]
        assert bool((state["exp_avg"][~m] == 0).all() and (state["exp_avg_sq"][~m] == 0).all())


@pytest.mark.parametrize("how", ["deepcopy", "torch.save(model)"])
def test_copies_keep_masks_and_hooks(make_tiny, batch, how):
    model = make_tiny(SUPAR)
    _train(model, steps=1)
    if how == "deepcopy":
        other = copy.deepcopy(model)
    else:
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        other = torch.load(buf, weights_only=False)
    assert _same_masks(model, other)
    assert fxparam.plan_of(other).masks == fxparam.plan_of(model).masks
    opt = _train(other, steps=3)  # parameters of the copy carry no tensor hooks until the guard re-adds them
    assert _exact(other)
    for fqn, m in masks_of(other).items():
        assert bool((opt.state[other.get_parameter(fqn)]["exp_avg"][~m] == 0).all())
    assert _exact(model)


def test_to_dtype_and_device_keep_bool_masks_and_hooks(make_tiny, batch):
    model = make_tiny(SUPAR)
    model.to(torch.float64).to("cpu")
    assert all(m.dtype == torch.bool for m in masks_of(model).values())
    assert model.get_parameter(HIDDEN[0]).dtype == torch.float64
    _train(model)
    assert _exact(model)
