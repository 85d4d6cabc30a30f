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
}
_ALIASES = {"neox": "gpt_neox", "gptneox": "gpt_neox"}

#: Config fields that carry width, per architecture (used to build wider copies).
WIDTH_FIELDS = {
    "gpt2": ("n_embd",),
    "llama": ("hidden_size", "intermediate_size"),
    "gpt_neox": ("hidden_size", "intermediate_size"),
    "bert": ("hidden_size", "intermediate_size"),
}
DEPTH_FIELDS = {"gpt2": "n_layer", "llama": "num_hidden_layers", "gpt_neox": "num_hidden_layers",
                "bert": "num_hidden_layers"}


def architectures() -> list[str]:
    return sorted(_ARCHS)


def hf_config(arch: str, **overrides: Any):
    """A small config of a Hugging Face architecture (``gpt2``, ``llama``, ``gpt_neox``, ``bert``)."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("Hugging Face models need transformers: pip install 'fxparam[hf]'") from exc
    arch = _ALIASES.get(arch, arch)
    if arch not in _ARCHS:
        raise ConfigError(f"unknown Hugging Face architecture {arch!r}; choose one of {architectures()}")
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
