"""Structure of a zoo of HF architectures from small configs: depth, residual sites, where the
depth multiplier lands, attention sites and their scales.

Expected values are read off each architecture's definition (how many layers the config
builds, whether attention and MLP are parallel branches or sequential, which projection ends
each branch, how the model scales q.k), not from fxparam.  Depth 3 exercises the capture's
shortening of repeated blocks (2 captured, mapped onto 3).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fxparam

T = pytest.importorskip("transformers")

L, D, H, HD = 3, 64, 4, 16
COMMON = dict(vocab_size=64, hidden_size=D, intermediate_size=128, num_hidden_layers=L, num_attention_heads=H,
              num_key_value_heads=H, max_position_embeddings=64)
SQRT = 1 / math.sqrt(HD)

# name: (config class, model class, config extras, attention implementation,
#        layers prefix, sites per block, branch output modules (suffixes), attention module, logit scale)
ZOO = {
    "mistral": ("MistralConfig", "MistralForCausalLM", {}, "sdpa",
                "model.layers", 2, ["self_attn.o_proj", "mlp.down_proj"], "self_attn", SQRT),
    "phi (parallel attn+MLP)": ("PhiConfig", "PhiForCausalLM", {}, "sdpa",
                                "model.layers", 1, ["self_attn.dense", "mlp.fc2"], "self_attn", SQRT),
    "falcon (parallel, multi-query)": ("FalconConfig", "FalconForCausalLM",
                                       dict(multi_query=True, new_decoder_architecture=False, parallel_attn=True),
                                       "sdpa", "transformer.h", 1, ["self_attention.dense", "mlp.dense_4h_to_h"],
                                       "self_attention", SQRT),
    "gptj (parallel)": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=D, n_layer=L, n_head=H, rotary_dim=8, n_positions=64),
                        "sdpa", "transformer.h", 1, ["attn.out_proj", "mlp.fc_out"], "attn", SQRT),
    "mixtral (MoE)": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2), "sdpa",
                      "model.layers", 2, ["self_attn.o_proj", "mlp.experts"], "self_attn", SQRT),
    "qwen3_moe (MoE)": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=HD), "sdpa",
                        "model.layers", 2, ["self_attn.o_proj", "mlp.experts"], "self_attn", SQRT),
    "olmo2 (norm on the branch output)": ("Olmo2Config", "Olmo2ForCausalLM", {}, "sdpa", "model.layers", 2,
                                          ["post_attention_layernorm", "post_feedforward_layernorm"], "self_attn", SQRT),
    "gemma2 (sandwich norms, soft-capped logits)": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=HD), "eager",
                                                    "model.layers", 2,
                                                    ["post_attention_layernorm", "post_feedforward_layernorm"],
                                                    "self_attn", None),
    "opt (scale folded into q)": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=128, word_embed_proj_dim=D), "sdpa",
                                  "model.decoder.layers", 2, ["self_attn.out_proj", "fc2"], "self_attn", SQRT),
    "granite (own residual and attention multipliers)": ("GraniteConfig", "GraniteForCausalLM",
                                                         dict(residual_multiplier=0.22, attention_multiplier=0.0625,
                                                              embedding_multiplier=12.0, logits_scaling=8.0),
                                                         "sdpa", "model.layers", 2,
                                                         ["self_attn.o_proj", "mlp.down_proj"], "self_attn", 0.0625),
    "bloom (baddbmm alpha, ALiBi)": ("BloomConfig", "BloomForCausalLM", dict(n_layer=L, n_head=H), "eager",
                                     "transformer.h", 2, ["self_attention.dense", "mlp.dense_4h_to_h"],
                                     "self_attention", SQRT),
}


def _build(name: str):
    cfg_cls, model_cls, extra, impl = ZOO[name][:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = getattr(T, cfg_cls)(**{**COMMON, **extra})
        cfg._attn_implementation = impl
        torch.manual_seed(0)
        return getattr(T, model_cls)(cfg).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_structure(name):
    prefix, per_block, outputs, attn, scale = ZOO[name][4:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = fxparam.inspect(_build(name))
    blocks = [f"{prefix}.{i}" for i in range(L)]
    assert a.depth == L and a.stream_depths == [L] and a.blocks == blocks
    assert len(a.residuals) == per_block * L
    want = sorted(f"{b}.{o}" for b in blocks for o in outputs)
    assert sorted(m for r in a.residuals for m in r.output_modules) == want
    assert all(r.block not in r.output_modules for r in a.residuals)  # never the skip
    assert [s.module for s in a.attention] == [f"{b}.{attn}" for b in blocks]
    for s in a.attention:
        assert s.head_dim == HD
        assert (s.scale is None) if scale is None else (s.scale == pytest.approx(scale)), s


# ------------------------------------------------------------------ the shared zoo (tests/analysis/_zoo.py)

Q = 0.25  # 1/sqrt(head dim 16), the zoo's head dim
#: name -> (layers prefix, sites per block, branch output suffixes, attention module suffix, logit scale);
#: from each architecture's definition (Gemma's query_pre_attn_scalar 256 -> 1/16; Gemma2 soft-caps).
ZOO_STRUCTURE = {
    "mistral": ("model.layers", 2, ["self_attn.o_proj", "mlp.down_proj"], "self_attn", Q),
    "qwen2": ("model.layers", 2, ["self_attn.o_proj", "mlp.down_proj"], "self_attn", Q),
    "mixtral": ("model.layers", 2, ["self_attn.o_proj", "mlp.experts"], "self_attn", Q),
    "qwen3_moe": ("model.layers", 2, ["self_attn.o_proj", "mlp.experts"], "self_attn", Q),
    "gemma2": ("model.layers", 2, ["post_attention_layernorm", "post_feedforward_layernorm"], "self_attn", None),
    "gemma3": ("model.layers", 2, ["post_attention_layernorm", "post_feedforward_layernorm"], "self_attn", 1 / 16),
    "olmo2": ("model.layers", 2, ["post_attention_layernorm", "post_feedforward_layernorm"], "self_attn", Q),
    "gptj": ("transformer.h", 1, ["attn.out_proj", "mlp.fc_out"], "attn", Q),
    "phi": ("model.layers", 1, ["self_attn.dense", "mlp.fc2"], "self_attn", Q),
    "falcon": ("transformer.h", 1, ["self_attention.dense", "mlp.dense_4h_to_h"], "self_attention", Q),
    "opt": ("model.decoder.layers", 2, ["self_attn.out_proj", "fc2"], "self_attn", Q),
    "gpt_bigcode": ("transformer.h", 2, ["attn.c_proj", "mlp.c_proj"], "attn", Q),
}


def _shared_zoo():
    from tests.analysis import _zoo  # the same module (and cached analyses) as test_hf_zoo.py

    return _zoo


@pytest.mark.slow
@pytest.mark.parametrize("name", [*ZOO_STRUCTURE, "t5"])
def test_shared_zoo_structure(name):
    zoo = _shared_zoo()
    depth = zoo.ZOO[name][3]["depth"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = zoo.analysis(name)
    if name == "t5":  # encoder and decoder: two streams, each its own depth; sub-layers are not blocks
        assert a.stream_depths == [depth, depth] and a.depth == depth
        blocks = [f"{s}.block.{i}" for s in ("encoder", "decoder") for i in range(depth)]
        assert sorted(a.blocks) == sorted(blocks)
        assert len(a.residuals) == 2 * depth + 3 * depth
        attn = [f"encoder.block.{i}.layer.0.SelfAttention" for i in range(depth)] + [
            f"decoder.block.{i}.layer.{j}.{k}" for i in range(depth) for j, k in ((0, "SelfAttention"), (1, "EncDecAttention"))]
        assert sorted(s.module for s in a.attention) == sorted(attn)
        assert all(s.scale == 1.0 for s in a.attention)  # T5 does not scale q.k
        return
    prefix, per_block, outputs, attn, scale = ZOO_STRUCTURE[name]
    blocks = [f"{prefix}.{i}" for i in range(depth)]
    assert a.depth == depth and a.stream_depths == [depth] and a.blocks == blocks
    assert len(a.residuals) == per_block * depth
    assert sorted(m for r in a.residuals for m in r.output_modules) == sorted(f"{b}.{o}" for b in blocks for o in outputs)
    assert [s.module for s in a.attention] == [f"{b}.{attn}" for b in blocks]
    for s in a.attention:
        assert (s.scale is None) if scale is None else (s.scale == pytest.approx(scale)), s
