"""Issue 13, roles from dimensions: cases 1 (functional tied readout), 2 (vocabulary = width),
3 (factorised input), 4 (MoE experts and router), 11 (residual conv net), explanations and overrides.

Expected values come from the muP table (shared/reference/parameterizations.md, Tensor
Programs V Table 3): readout multiplier alpha_out/m_d, input-weight LR x1 and init sigma,
hidden init sigma/sqrt(m_d), LR eta/m_d, WD lambda*m_d; never from fxparam's own output.
"""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxparam
from fxparam.analysis.roles import UnclassifiedWarning
from fxparam.models import GPT, GPTConfig
from fxparam.passes import build_plan

IDS = torch.zeros(2, 8, dtype=torch.long)
MUP = fxparam.MuP(base_width=32)  # the table's defaults: alpha_out, sigma
SIGMA, ALPHA_OUT = MUP.init_std, MUP.output_multiplier


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.proj(F.gelu(self.fc(self.ln(x))))


class FunctionalTiedLM(nn.Module):
    """Case 1: ``logits = F.linear(h, self.wte.weight)``, no lm_head module."""

    def __init__(self, vocab=50, width=128, depth=2):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return F.linear(self.ln_f(x), self.wte.weight)

    def example_inputs(self):
        return (torch.zeros(2, 8, dtype=torch.long),)


class LinearHeadLM(nn.Module):
    """Cases 2 and 3: an nn.Linear readout, optionally a factorised input Embedding(V, e) -> Linear(e, d)."""

    def __init__(self, vocab=50, width=128, depth=2, factor=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, factor or width)
        self.up = nn.Linear(factor, width) if factor else None
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        if self.up is not None:
            x = self.up(x)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _same_weights_ratio(model, config, **kw):
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    before = model(ids)
    fxparam.transform(model, config, example_inputs=IDS, init=False, **kw)
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())
    return model(ids) / before


# ------------------------------------------------------------------ case 1


def test_case1_functional_tied_readout_found_by_use():
    a = fxparam.inspect(FunctionalTiedLM(), IDS)
    info = a.params["wte.weight"]
    assert info.role == "embedding"  # the shared table keeps embedding rules
    assert info.multiplier_at == "ln_f"  # the readout's input: ln_f's output, used only there
    assert "read out" in info.reason


def test_case1_logits_scaled_by_alpha_out_over_m_d():
    m_d = 128 / 32
    ratio = _same_weights_ratio(FunctionalTiedLM(), "mup", base_width=32)
    assert torch.allclose(ratio, torch.full_like(ratio, ALPHA_OUT / m_d), rtol=1e-4)  # 0.25, not 1.00


def test_case1_same_multiplier_as_an_nn_linear_tied_readout():
    class ModuleTied(LinearHeadLM):
        def __init__(self):
            super().__init__()
            self.head.weight = self.emb.weight

    p_fun = fxparam.plan(FunctionalTiedLM(), "mup", example_inputs=IDS, base_width=32)
    p_mod = fxparam.plan(ModuleTied(), "mup", example_inputs=IDS, base_width=32)
    assert list(p_fun.multipliers.values()) == [pytest.approx(ALPHA_OUT / 4)]
    assert p_mod.multipliers == {"input:head": pytest.approx(ALPHA_OUT / 4)}


# ------------------------------------------------------------------ case 2


@pytest.mark.parametrize("width", [64, 128])
def test_case2_vocab_equal_to_width_is_still_a_vocabulary(width):
    a = fxparam.inspect(LinearHeadLM(vocab=width, width=width), IDS)
    assert a.params["head.weight"].role == "readout"
    assert a.params["head.weight"].width_dims == [1]  # fan-in only: the vocabulary does not grow
    assert a.params["emb.weight"].role == "embedding" and a.params["emb.weight"].width_dims == [1]
    ratio = _same_weights_ratio(LinearHeadLM(vocab=width, width=width), "mup", base_width=32)
    assert torch.allclose(ratio, torch.full_like(ratio, ALPHA_OUT * 32 / width), rtol=1e-4)


def test_case2_reference_gpt_vocab_256_at_width_256():
    model = GPT(GPTConfig(width=256, depth=2, vocab=256))
    p = fxparam.plan(model, "mup", base_width=64)
    assert p.params["lm_head.weight"].role == "readout"
    assert p.multipliers["input:lm_head"] == pytest.approx(ALPHA_OUT / 4)
    assert p.params["wte.weight"].role == "embedding"
    assert p.params["blocks.0.mlp.fc.weight"].role == "hidden"


# ------------------------------------------------------------------ case 3


def test_case3_factorised_input_projection_gets_input_weight_rules():
    a = fxparam.inspect(LinearHeadLM(factor=16), IDS)
    up = a.params["up.weight"]
    assert up.role == "embedding" and up.width_dims == [0]  # fan-in 16 fixed, fan-out 128 width
    assert a.params["emb.weight"].width_dims == []
    p = fxparam.plan(LinearHeadLM(factor=16), "mup", example_inputs=IDS, base_width=32)
    assert p.params["up.weight"].lr_mult == 1.0  # input weight: eta, not eta/m_d = 0.25
    assert p.params["up.weight"].init_std == pytest.approx(SIGMA)  # sigma, not sigma/sqrt(m_d)
    hidden = p.params["blocks.0.fc.weight"]
    assert hidden.lr_mult == pytest.approx(1 / 4) and hidden.init_std == pytest.approx(SIGMA / 2)


def test_case3_factor_equal_to_width_is_still_fixed():
    a = fxparam.inspect(LinearHeadLM(vocab=64, width=64, factor=64), IDS)
    assert a.params["up.weight"].role == "embedding"


# ------------------------------------------------------------------ case 4 (HF MoE)


def _hf(name, **kw):
    transformers = pytest.importorskip("transformers")
    cfg = getattr(transformers, name + "Config")(**kw)
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False
    torch.manual_seed(0)
    return getattr(transformers, name + "ForCausalLM")(cfg)


MOE = {
    "Mixtral": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, num_local_experts=4, num_experts_per_tok=2,
                    max_position_embeddings=32),
    "Qwen3Moe": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128, num_experts=4,
                     num_experts_per_tok=2, max_position_embeddings=32, decoder_sparse_step=1, mlp_only_layers=[]),
}


@pytest.mark.parametrize("arch", sorted(MOE))
def test_case4_moe_experts_hidden_router_readout(arch):
    model = _hf(arch, **MOE[arch])
    a = fxparam.inspect(model)
    hidden_ffn = MOE[arch].get("moe_intermediate_size", MOE[arch]["intermediate_size"])
    for i in range(2):
        gate_up = a.params[f"model.layers.{i}.mlp.experts.gate_up_proj"]  # [experts, 2 ffn, d]
        down = a.params[f"model.layers.{i}.mlp.experts.down_proj"]  # [experts, d, ffn]
        assert gate_up.role == down.role == "hidden"
        assert gate_up.width_dims == down.width_dims == [1, 2]  # the expert axis is fixed
        assert (gate_up.fan_in, down.fan_in) == (64, hidden_ffn)  # per-matrix fan-in, not experts x d
        assert a.params[f"model.layers.{i}.mlp.gate.weight"].role == "readout"  # router: width -> experts
    p = build_plan(a, fxparam.MuP(base_width=16))  # the plan of this analysis (one capture)
    m_d = 4.0
    rules = p.params["model.layers.0.mlp.experts.down_proj"]
    assert rules.init_std == pytest.approx(SIGMA / math.sqrt(m_d))
    assert rules.lr_mult == pytest.approx(1 / m_d) and rules.wd_mult == pytest.approx(m_d)
    assert p.multipliers["input:model.layers.0.mlp.gate"] == pytest.approx(ALPHA_OUT / m_d)


# ------------------------------------------------------------------ case 11 (conv)


class ResConv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.relu(self.c1(x)))


class ConvNet(nn.Module):
    def __init__(self, channels=32, classes=10, depth=2):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResConv(channels) for _ in range(depth)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    def example_inputs(self):
        return (torch.zeros(2, 3, 8, 8),)


@pytest.mark.parametrize("image", [12, 16, 32])
def test_case11_conv_channels_are_width(image):
    a = fxparam.inspect(ConvNet(), torch.zeros(2, 3, image, image))
    assert a.width == 32  # channels, whatever the image size (even when equal to it)
    assert a.params["stem.weight"].role == "embedding" and a.params["stem.weight"].width_dims == [0]
    for i in range(2):
        for c in ("c1", "c2"):
            w = a.params[f"blocks.{i}.{c}.weight"]
            assert w.role == "hidden" and w.width_dims == [0, 1]  # kernel axes 2, 3 are not width
    assert a.params["head.weight"].role == "readout"
    p = fxparam.plan(ConvNet(), "mup", example_inputs=torch.zeros(2, 3, image, image), base_width=8)
    assert p.params["blocks.0.c1.weight"].lr_mult == pytest.approx(1 / 4)
    assert p.params["blocks.0.c1.weight"].init_std == pytest.approx(SIGMA / 2)


# ------------------------------------------------------------------ explanations and overrides


def test_reason_and_width_dims_shown():
    a = fxparam.inspect(LinearHeadLM(factor=16), IDS)
    assert a.params["up.weight"].reason == "linear: [16 fixed] -> [128 width], fixed fan-in"
    assert a.params["head.weight"].reason == "linear: [128 width] -> [50 output]"
    assert a.params["emb.weight"].reason == "lookup: rows [50 embedding rows] -> [16 fixed]"
    text = str(a)
    assert "linear: [128 width] -> [512 width]" in text and "why" in text and "width axes" in text


def test_role_overrides_by_fqn_and_pattern():
    a = fxparam.inspect(LinearHeadLM(factor=16), IDS,
                        roles={"up.weight": "hidden", r"re:blocks\.1\..*\.weight$": "frozen"})
    assert a.params["up.weight"].role == "hidden" and "override" in a.params["up.weight"].reason
    assert a.params["blocks.1.fc.weight"].role == "frozen"
    assert a.params["blocks.0.fc.weight"].role == "hidden"
    p = fxparam.plan(LinearHeadLM(factor=16), "mup", example_inputs=IDS, base_width=32,
                     roles={r"re:blocks\.1\..*\.weight$": "frozen"})
    assert p.params["blocks.1.fc.weight"].lr_mult == 0.0 and p.params["blocks.1.fc.weight"].init == "keep"
    with pytest.raises(fxparam.ConfigError, match="choose one of"):
        fxparam.inspect(LinearHeadLM(), IDS, roles={"head.weight": "output"})


class InlineFunctionalReadout(nn.Module):
    """The readout reads a value computed inline by the root: no module to scale."""

    def __init__(self, width=64, vocab=40):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.fc = nn.Linear(width, width)
        self.head_w = nn.Parameter(torch.randn(vocab, width) * 0.02)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.fc(x)
        return F.linear(x, self.head_w)


def test_unplaceable_readout_multiplier_is_loud():
    with pytest.warns(UnclassifiedWarning, match=r"head_w.*roles="):
        p = fxparam.plan(InlineFunctionalReadout(), "mup", example_inputs=IDS, base_width=16)
    assert any("head_w" in n and "roles=" in n for n in p.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnclassifiedWarning)
        a = fxparam.inspect(InlineFunctionalReadout(), IDS, roles={"head_w": "vector"})
    assert a.params["head_w"].role == "vector"
