"""Checkpoints of transformed models: safetensors, HF save/from_pretrained, the plan as JSON."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from _lowering_cases import COMPLETEP, MUP, batch, gpt_case, hf_case, train

import fxparam
from fxparam.lowering.graph import lower_graph

safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_safetensors_round_trip(tmp_path: Path, tied: bool) -> None:
    case = gpt_case("swiglu-rms-rope-tied" if tied else "gelu-learned")
    torch.manual_seed(0)
    model = fxparam.transform(case.make(), "completep", **COMPLETEP)
    train(case, model, steps=2)
    path = tmp_path / "model.safetensors"
    if tied:  # save_model/load_model deduplicate the shared tensor (save_file refuses aliases)
        safetensors_torch.save_model(model, str(path))
    else:
        safetensors_torch.save_file(model.state_dict(), str(path))
    plan_json = fxparam.plan_of(model).to_json()

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    fresh = fxparam.apply_plan(case.make(), plan_json, init=False)
    if tied:
        safetensors_torch.load_model(fresh, str(path))
    else:
        fresh.load_state_dict(safetensors_torch.load_file(str(path)))
    idx, _ = batch(7)
    torch.testing.assert_close(fresh(idx), model(idx), atol=0, rtol=0)

    # the same checkpoint into a graph-lowered model (same FQNs, same state_dict keys)
    gm = lower_graph(case.make(), fxparam.Plan.from_json(plan_json), init=False, example_inputs=idx)
    if tied:
        safetensors_torch.load_model(gm, str(path))
    else:
        gm.load_state_dict(safetensors_torch.load_file(str(path)))
    torch.testing.assert_close(gm(idx), model(idx), atol=1e-6, rtol=1e-5)


def test_hf_save_pretrained_round_trip(tmp_path: Path) -> None:
    import transformers

    case = hf_case("gpt2")
    torch.manual_seed(0)
    model = fxparam.transform(case.make(), "mup", **MUP)
    train(case, model, steps=2)
    model.save_pretrained(tmp_path)  # safetensors; the hooks are not part of it
    (tmp_path / "fxparam_plan.json").write_text(fxparam.plan_of(model).to_json())

    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    loaded.train()
    fxparam.apply_plan(loaded, (tmp_path / "fxparam_plan.json").read_text())
    idx, _ = batch(7)
    torch.testing.assert_close(loaded(input_ids=idx).logits, model(input_ids=idx).logits, atol=0, rtol=0)
    assert fxparam.plan_of(loaded).fingerprint() == fxparam.plan_of(model).fingerprint()
    plain = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert not torch.allclose(plain(input_ids=idx).logits, model(input_ids=idx).logits)  # the plan matters


def test_torch_saved_plan_json_reproduces_the_transform(tmp_path: Path) -> None:
    case = gpt_case("parallel-alibi")
    torch.manual_seed(0)
    base = case.make()
    state = copy.deepcopy(base.state_dict())
    torch.manual_seed(5)
    model = fxparam.transform(base, "completep", **COMPLETEP)
    torch.save({"fxparam_plan": fxparam.plan_of(model).to_json()}, tmp_path / "plan.pt")

    saved = torch.load(tmp_path / "plan.pt", weights_only=True)["fxparam_plan"]
    again = case.make()
    again.load_state_dict(state)
    torch.manual_seed(5)
    fxparam.apply_plan(again, saved, init=True)  # same plan, same seed: the same transform
    assert fxparam.plan_of(again) == fxparam.plan_of(model)
    for (name, p), (_, q) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=0, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    idx, _ = batch(3)
    torch.testing.assert_close(again(idx), model(idx), atol=0, rtol=0)
    assert train(case, again).losses == train(case, model).losses
