"""Reference models used by tests, coordinate checks and benchmarks."""

from fxparam.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
