"""Reference models used by tests, coordinate checks and benchmarks: the GPT, small HF configs (`hf`), ALiBi (`alibi`)."""

from fxparam.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
