"""Build Hugging Face models from their config classes (no downloads), for inspect/tests/CLI."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import ConfigError

#: Small but representative configs: every width dimension is set explicitly.
_ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256,
                                               "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
                                                  "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 256,
                                                  "max_position_embeddings": 64}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"hidden_size": 64, "intermediate_size": 256,
                                                         "num_hidden_layers": 2, "num_attention_heads": 4,
                                                         "vocab_size": 256, "max_position_embeddings": 64,
                                                         "use_parallel_residual": True, "bos_token_id": 0,
                                                         "eos_token_id": 0}),
    "bert": ("BertConfig", "BertForMaskedLM", {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                                               "num_attention_heads": 4, "vocab_size": 256,
                                               "max_position_embeddings": 64}),
    # grouped-query attention (4 query heads share 2 key/value heads), no biases, sliding window off
    "mistral": ("MistralConfig", "MistralForCausalLM", {"hidden_size": 64, "intermediate_size": 176,
                                                        "num_hidden_layers": 2, "num_attention_heads": 4,
                                                        "num_key_value_heads": 2, "head_dim": 16,
                                                        "sliding_window": None, "vocab_size": 256,
                                                        "max_position_embeddings": 64}),
    # grouped-query attention with q/k/v biases (fixed by the architecture), untied readout
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"hidden_size": 64, "intermediate_size": 176,
                                                  "num_hidden_layers": 2, "num_attention_heads": 4,
                                                  "num_key_value_heads": 2, "vocab_size": 256,
                                                  "max_position_embeddings": 64, "tie_word_embeddings": False}),
    # mixture of experts: 4 SwiGLU experts, top-2 routing, per-expert hidden size 96
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"hidden_size": 64, "intermediate_size": 96,
                                                        "num_hidden_layers": 2, "num_attention_heads": 4,
                                                        "num_key_value_heads": 2, "head_dim": 16,
                                                        "num_local_experts": 4, "num_experts_per_tok": 2,
                                                        "vocab_size": 256, "max_position_embeddings": 64}),
}
_ALIASES = {"neox": "gpt_neox", "gptneox": "gpt_neox", "qwen": "qwen2"}

#: Architectures refused on purpose, with the reason (an unknown name is refused too, listing the known).
REFUSED = {
    "t5": (
        "T5 is an encoder-decoder: coord-check and transfer train a next-token LM on one token stream "
        "(model(ids) -> logits of the next ids), while T5 needs decoder inputs, and fed the same ids its encoder "
        "would see the targets. Use the Python API with your own objective: fxparam.inspect(model, "
        "{'input_ids': ids, 'decoder_input_ids': ids}) and fxparam.coord_check(..., loss_fn=...), or a "
        "module:factory that wraps T5 in a decoder-only interface"
    ),
}

#: Config fields that carry width, per architecture (used to build wider copies).
WIDTH_FIELDS = {
    "gpt2": ("n_embd",),
    "llama": ("hidden_size", "intermediate_size"),
    "gpt_neox": ("hidden_size", "intermediate_size"),
    "bert": ("hidden_size", "intermediate_size"),
    "mistral": ("hidden_size", "intermediate_size"),
    "qwen2": ("hidden_size", "intermediate_size"),
    "mixtral": ("hidden_size", "intermediate_size"),  # the expert count stays fixed; each expert widens
}
DEPTH_FIELDS = {"gpt2": "n_layer", "llama": "num_hidden_layers", "gpt_neox": "num_hidden_layers",
                "bert": "num_hidden_layers", "mistral": "num_hidden_layers", "qwen2": "num_hidden_layers",
                "mixtral": "num_hidden_layers"}


def architectures() -> list[str]:
    """The ``hf:`` architecture names (``gpt2``, ``llama``, ``gpt_neox``, ``bert``, ``mistral``, ``qwen2``, ``mixtral``)."""
    return sorted(_ARCHS)


def check_architecture(arch: str) -> str:
    """The canonical name of ``arch`` (aliases resolved).

    Raises:
        ConfigError: an architecture refused on purpose (:data:`REFUSED`, with the reason) or unknown.
    """
    name = _ALIASES.get(arch, arch)
    if name in REFUSED:
        raise ConfigError(f"hf:{arch} is not available: {REFUSED[name]}")
    if name not in _ARCHS:
        raise ConfigError(f"unknown Hugging Face architecture {arch!r}; choose one of {architectures()}")
    return name


def hf_config(arch: str, **overrides: Any):
    """A small config of a Hugging Face architecture (see :func:`architectures`), SDPA attention, no cache.

    Args:
        arch: the architecture name.
        **overrides: config fields replacing the small defaults (width, depth, heads ...).

    Raises:
        ConfigError: transformers missing, or an unknown / refused architecture (:func:`check_architecture`).
    """
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("Hugging Face models need transformers: pip install 'fxparam[hf]'") from exc
    arch = check_architecture(arch)
    cfg_name, _model_name, defaults = _ARCHS[arch]
    cfg = getattr(transformers, cfg_name)(**(defaults | overrides))
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False
    return cfg


def hf_model(arch: str, *, device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """Build a Hugging Face model from a small config, with SDPA attention and no cache."""
    import transformers

    arch = _ALIASES.get(arch, arch)
    cfg = hf_config(arch, **overrides)
    cls = getattr(transformers, _ARCHS[arch][1])
    if device is None:
        return cls(cfg)
    with torch.device(device):
        return cls(cfg)
