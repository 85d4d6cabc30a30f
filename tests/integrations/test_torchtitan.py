"""torchtitan: the converter applies the plan when torchtitan builds its debug Llama (meta); optimizer groups.

torchtitan is not installed in CI (it pins huggingface_hub<2 / fsspec<=2026.2): these tests skip there.
"""

from __future__ import annotations

import pytest
import torch

import fxparam

pytest.importorskip("torchtitan.protocols.model")
llama3 = pytest.importorskip("torchtitan.models.llama3")

from fxparam.integrations.torchtitan import converter  # noqa: E402

BASE_WIDTH, BASE_DEPTH = 64, 2  # the debug model: dim 256, 6 layers -> m_L = 3
HIDDEN = ("attention.qkv_linear.wqkv.weight", "attention.wo.weight", "feed_forward.w1.weight",
          "feed_forward.w2.weight", "feed_forward.w3.weight")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    spec = llama3.model_registry("debugmodel", converters=[converter("completep", base_width=BASE_WIDTH,
                                                                      base_depth=BASE_DEPTH)])
    with torch.device("meta"):
        return spec.model.build()


def test_converter_applies_the_plan_at_build(model: torch.nn.Module) -> None:
    plan = fxparam.plan_of(model)
    assert plan.depth == 6 and plan.m_L == pytest.approx(3.0)
    for i in range(6):
        for name in HIDDEN:
            assert plan.params[f"layers.{i}.{name}"].role == "hidden"
        assert plan.params[f"layers.{i}.attention_norm.weight"].role == "vector"
        assert plan.multipliers.get(f"layers.{i}.attention.wo") == pytest.approx(1 / 3)  # branch 1/m_L (alpha 1)
        assert plan.multipliers.get(f"layers.{i}.feed_forward.w2") == pytest.approx(1 / 3)
    assert plan.params["tok_embeddings.weight"].role == "embedding"
    assert plan.params["lm_head.weight"].role == "readout"


def test_converter_width_is_the_model_dim(model: torch.nn.Module) -> None:
    assert fxparam.plan_of(model).width == 256


def test_optimizer_groups_follow_the_table(model: torch.nn.Module) -> None:
    plan = fxparam.plan_of(model)
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    group = {n: g for g in opt.param_groups for n in g["param_names"]}
    m_d = plan.m_d
    hidden = group["layers.3.feed_forward.w1.weight"]
    assert hidden["lr"] == pytest.approx(1e-2 / m_d) and hidden["weight_decay"] == pytest.approx(0.1 * m_d)  # alpha=1
    assert group["tok_embeddings.weight"]["lr"] == pytest.approx(1e-2)
    assert group["layers.0.ffn_norm.weight"]["weight_decay"] == 0.0


def test_planned_init_survives_torchtitans_init_weights(model: torch.nn.Module) -> None:
    plan = fxparam.plan_of(model)
    model.to_empty(device="cpu")
    model.init_weights(buffer_device=None)
    w = model.layers["5"].feed_forward.w1.weight
    assert w.std().item() == pytest.approx(plan.params["layers.5.feed_forward.w1.weight"].init_std, rel=0.05)
    assert torch.all(model.layers["0"].attention_norm.weight == 1)
