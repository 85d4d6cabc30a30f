"""Models for the CLI tests: a built-in GPT, and one whose activations grow with width by design."""

from __future__ import annotations

import torch
import torch.nn as nn

from fxparam.models import GPT, GPTConfig


class ScaledEmbedding(nn.Embedding):
    """An embedding whose output is multiplied by a learnable gain initialised to ``factor``.

    A parameter, not a constant: the analysis cannot fold it as a width constant, and the plan
    keeps its value (a scalar gain is a vector-like parameter), so the breakage survives.
    """

    def __init__(self, num: int, dim: int, factor: float) -> None:
        super().__init__(num, dim)
        self.factor = nn.Parameter(torch.tensor(float(factor)))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) * self.factor


def make(width: int = 64, depth: int = 2) -> nn.Module:
    """A small GPT (head dim 16, 32 positions)."""
    return GPT(GPTConfig(width=width, depth=depth, head_dim=16, seq_len=32))


def make_broken(width: int = 64, depth: int = 2) -> nn.Module:
    """A GPT whose token embedding is multiplied by sqrt(width): the residual stream grows with width."""
    model = make(width, depth)
    model.wte = ScaledEmbedding(model.config.vocab, width, width**0.5)
    nn.init.normal_(model.wte.weight, std=0.02)
    return model


def make_width_only(width: int = 64) -> nn.Module:
    """A factory without a depth argument (no depth sweep possible)."""
    return make(width, 2)


class Plain(nn.Module):
    """A wrapper with no ``example_inputs()`` and no ``config.vocab_size``, like most user models."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.inner(idx)


def make_plain(width: int = 64, depth: int = 2) -> nn.Module:
    """The small GPT behind a wrapper fxparam cannot make example inputs for."""
    return Plain(make(width, depth))


class _BiasedLogits(nn.Module):
    """Adds a fixed (untrainable) bias towards token 0 that grows with width."""

    def __init__(self, inner: nn.Module, bias: float) -> None:
        super().__init__()
        self.inner = inner
        self.bias = bias

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.inner(idx)
        shift = torch.zeros(logits.shape[-1], device=logits.device, dtype=logits.dtype)
        shift[0] = self.bias
        return logits + shift


def make_worse_when_wider(width: int = 64, depth: int = 2) -> nn.Module:
    """A model broken so that wider is worse: logit 0 is pushed up by 3 x (width/32 - 1) nats."""
    return _BiasedLogits(make(width, depth), 3.0 * (width / 32 - 1))
