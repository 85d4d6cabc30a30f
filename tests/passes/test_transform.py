import copy
import io

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.models import GPT, GPTConfig

CFG = GPTConfig(width=128, depth=3, head_dim=16, tie_embeddings=True)


def _x():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


def test_transform_in_place_keeps_keys_and_identity():
    model = GPT(CFG)
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    out = fxparam.transform(model, "completep", base_width=64, base_depth=1)
    assert out is model
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == params
    assert model.lm_head.weight is model.wte.weight  # tie preserved


def test_transform_twice_is_an_error_not_double_scaling():
    model = fxparam.transform(GPT(CFG), "mup", base_width=64)
    before = model(_x())
    with pytest.raises(fxparam.AlreadyTransformedError, match="double-scale"):
        fxparam.transform(model, "mup", base_width=64)
    torch.testing.assert_close(model(_x()), before)


def test_round_trip_state_dict_into_fresh_model():
    model = fxparam.transform(GPT(CFG), "completep", base_width=64, base_depth=1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = fxparam.transform(GPT(CFG), "completep", base_width=64, base_depth=1, init=False)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    torch.testing.assert_close(fresh(_x()), model(_x()), rtol=0, atol=0)


def test_saved_plan_reproduces_the_transform():
    model = fxparam.transform(GPT(CFG), "completep", base_width=64, base_depth=1)
    text = fxparam.plan_of(model).to_json()
    fresh = fxparam.apply_plan(GPT(CFG), text)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(_x()), model(_x()), rtol=0, atol=0)


def test_deepcopy_to_train_eval_and_pickle():
    model = fxparam.transform(GPT(CFG), "completep", base_width=64, base_depth=1)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(_x()), model(_x()))
    assert fxparam.plan_of(twin) == fxparam.plan_of(model)
    model.eval()
    model.to(torch.float64)
    assert model(_x()).dtype == torch.float64
    model.train()
    buf = io.BytesIO()
    torch.save(twin, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    torch.testing.assert_close(again(_x()), twin(_x()))


def test_multipliers_really_change_the_forward():
    base = GPT(CFG)
    transformed = copy.deepcopy(base)
    fxparam.transform(transformed, "completep", base_width=64, base_depth=1, init=False)
    # same weights, different forward: readout input / 2, branches / 3
    assert not torch.allclose(base(_x()), transformed(_x()))
    plan = fxparam.plan_of(transformed)
    assert plan.input_multipliers["lm_head"] == pytest.approx(0.5)
    assert plan.output_multipliers["blocks.2.mlp.proj"] == pytest.approx(1 / 3)


def test_reinit_follows_the_plan():
    torch.manual_seed(0)
    model = fxparam.transform(GPT(GPTConfig(width=512, depth=2, head_dim=16)), "mup", base_width=64)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02 / 8**0.5, rel=0.05)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(model.blocks[0].ln_1.weight == 1)


def test_plain_mlp_gets_width_rules_and_completep_reports_depth_0():
    mlp = nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 3))
    fxparam.transform(mlp, "completep", base_width=64, base_depth=2, example_inputs=torch.zeros(4, 10))
    plan = fxparam.plan_of(mlp)
    assert plan.depth == 0 and plan.m_L == 1.0
    assert any("depth 0" in n for n in plan.notes)
    assert plan.params["2.weight"].lr_mult == pytest.approx(1 / 4)
    assert plan.input_multipliers["4"] == pytest.approx(1 / 4)
    assert mlp(torch.zeros(4, 10)).shape == (4, 3)


def test_model_without_width_raises_and_is_unchanged():
    lin = nn.Linear(10, 3)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    with pytest.raises(fxparam.AnalysisError, match="width .* cannot be determined"):
        fxparam.transform(lin, "mup", base_width=4, example_inputs=torch.zeros(2, 10))
    assert all(torch.equal(before[k], v) for k, v in lin.state_dict().items())
    assert not hasattr(lin, "_fxparam_plan") and not lin._forward_hooks


def test_plan_for_other_model_is_rejected_without_changes():
    plan = fxparam.plan(GPT(CFG), "mup", base_width=64)
    other = GPT(GPTConfig(width=128, depth=2, head_dim=16))
    with pytest.raises(fxparam.LoweringError, match="does not match"):
        fxparam.apply_plan(other, plan)
    assert not hasattr(other, "_fxparam_plan")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in other.modules())


def test_nanogpt_style_attention_scale_without_attribute():
    from tests.nanogpt_style import make

    model = make(width=128, depth=2)
    fxparam.transform(model, "mup", base_width=32, base_head_dim=8)  # head dim 16 = 2x base
    plan = fxparam.plan_of(model)
    site = plan.attention["transformer.h.0.attn"]
    assert site.attr is None and site.scale == pytest.approx(8**0.5 / 16)
    x = _x() % 128  # this model's vocabulary is 128
    logits, _ = model(x)
    # the override only applies inside transformed modules
    q = torch.randn(1, 1, 4, 16)
    ref = torch.softmax(q @ q.transpose(-1, -2) / 4, -1) @ q
    torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, q, q), ref)
    assert torch.isfinite(logits).all()


def test_hf_save_pretrained_round_trip(tmp_path):
    pytest.importorskip("transformers")
    import transformers

    from fxparam.models.hf import hf_model

    model = fxparam.transform(hf_model("llama", hidden_size=128, num_attention_heads=8, num_key_value_heads=8),
                              "completep", base_width=64, base_depth=1)
    model.save_pretrained(tmp_path)
    fresh = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    fxparam.apply_plan(fresh, fxparam.plan_of(model))
    x = _x()
    torch.testing.assert_close(fresh(x).logits, model(x).logits)
