"""Small Hugging Face models for the architecture zoo (no downloads): one builder shared by the
role tests (test_hf_zoo.py) and the structure tests (depth, residual and attention sites).

``ZOO[name] = (config class, model class, config kwargs, expected)``: every width field is
set explicitly so that ``build(name, width=2 * w)`` gives the same architecture at a second
width (``WIDTH_FIELDS``).  ``expected`` holds facts known from the architecture's definition
(not from fxparam): which parameters are embeddings / readouts, and the depth.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

_ATTN = dict(num_attention_heads=4, max_position_embeddings=64, vocab_size=96)

#: name -> (config class, model class, config kwargs at width 64, expected facts)
ZOO: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2,
                     head_dim=16, sliding_window=None, **_ATTN),
                dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight"], depth=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2,
                   tie_word_embeddings=False, **_ATTN),
              dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight"], depth=2)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_key_value_heads=2,
                     head_dim=16, num_local_experts=4, num_experts_per_tok=2, **_ATTN),
                dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight", ".mlp.gate.weight"],
                     experts=[".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"], depth=2)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=48, num_hidden_layers=2,
                       num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                       decoder_sparse_step=1, mlp_only_layers=[], **_ATTN),
                  dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight", ".mlp.gate.weight"],
                       experts=[".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"], depth=2)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2,
                    head_dim=16, **_ATTN),
               dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight"], depth=2)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2,
                    head_dim=16, sliding_window=16, **_ATTN),
               dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight"], depth=2)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=4, **_ATTN),
              dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight"], depth=2)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, vocab_size=96, n_inner=128),
             dict(embeddings=["transformer.wte.weight"], readouts=["lm_head.weight"], depth=2)),
    "phi": ("PhiConfig", "PhiForCausalLM",
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, **_ATTN),
            dict(embeddings=["model.embed_tokens.weight"], readouts=["lm_head.weight"], depth=2)),
    "falcon": ("FalconConfig", "FalconForCausalLM",
               dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                    parallel_attn=True, new_decoder_architecture=False, alibi=False, vocab_size=96,
                    max_position_embeddings=64, ffn_hidden_size=128, bias=False),
               dict(embeddings=["transformer.word_embeddings.weight"], readouts=["lm_head.weight"], depth=2)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, word_embed_proj_dim=64, **_ATTN),
            dict(embeddings=["model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"],
                 readouts=["lm_head.weight"], depth=2)),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM",
                    dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64, vocab_size=96,
                         multi_query=True),
                    dict(embeddings=["transformer.wte.weight", "transformer.wpe.weight"],
                         readouts=["lm_head.weight"], depth=2)),
    "t5": ("T5Config", "T5ForConditionalGeneration",
           dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=96,
                decoder_start_token_id=0, tie_word_embeddings=False),
           dict(embeddings=["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"],
                readouts=["lm_head.weight"], depth=2)),
}

#: Architectures without SDPA support in transformers 5 (manual softmax attention).
ATTN_IMPL = {"gemma2": "eager"}

#: Config fields that grow with width (everything else, heads included, stays fixed).
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "moe_intermediate_size", "n_embd", "n_inner", "ffn_dim",
                "word_embed_proj_dim", "ffn_hidden_size", "d_model", "d_ff", "num_attention_heads", "n_head",
                "num_heads", "num_key_value_heads")


def config(name: str, width: int = 64):
    """The zoo config of ``name`` with every width field scaled by ``width / 64`` (heads grow, head dim fixed)."""
    transformers = pytest.importorskip("transformers")
    cfg_cls, _model_cls, kwargs, _expected = ZOO[name]
    kw = dict(kwargs)
    for f in WIDTH_FIELDS:
        if f in kw and not (f == "num_key_value_heads" and kw.get("multi_query")):
            kw[f] = kw[f] * width // 64
    cfg = getattr(transformers, cfg_cls)(**kw)
    cfg._attn_implementation = ATTN_IMPL.get(name, "sdpa")
    cfg.use_cache = False
    return cfg


def build(name: str, width: int = 64, *, device: str | None = None, seed: int | None = 0):
    """A small HF model of zoo architecture ``name`` at ``width`` (SDPA attention, no cache).

    ``seed=None`` leaves the global RNG alone (a coordinate check seeds each of its seeds itself).
    """
    transformers = pytest.importorskip("transformers")
    cfg = config(name, width)
    if seed is not None:
        torch.manual_seed(seed)
    cls = getattr(transformers, ZOO[name][1])
    if device is None:
        return cls(cfg)
    with torch.device(device):
        return cls(cfg)


def example_inputs(name: str, batch: int = 2, seq: int = 8, *, seed: int | None = None) -> dict[str, torch.Tensor]:
    vocab = ZOO[name][2].get("vocab_size", 96)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = torch.randint(0, vocab, (batch, seq), generator=gen) if gen is not None else torch.zeros(batch, seq, dtype=torch.long)
    if name == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids}
    return {"input_ids": ids}


_ANALYSES: dict[str, object] = {}


def analysis(name: str):
    """``fxparam.inspect`` of the zoo model at width 64, computed once per test session (captures are slow)."""
    import fxparam

    if name not in _ANALYSES:
        _ANALYSES[name] = fxparam.inspect(build(name), example_inputs(name))
    return _ANALYSES[name]
