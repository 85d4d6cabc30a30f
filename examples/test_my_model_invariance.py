"""Put fxparam's invariance guarantee into your own test suite.

Copy this file next to your tests and replace ``make`` with your model's factory: any
function ``make(width=..., depth=...)`` returning a fresh ``nn.Module`` that maps byte
tokens ``[batch, seq]`` (0-255) to logits ``[batch, seq, vocab]`` (for other inputs or
losses pass ``data=(inputs, targets)`` and ``loss_fn=...``, as for ``fxparam.coord_check``).

Run it with ``pytest examples/test_my_model_invariance.py`` (about a minute on 2 CPU cores).
A model fxparam cannot make example inputs for (no ``example_inputs()`` method, no
``config.vocab_size``) is inspected with a slice of the check's batch.
On failure the AssertionError names the activation, the step and the slope, and prints the
whole slope table; for a model whose embedding output is multiplied by sqrt(width)::

    'mup' is not width-invariant over widths [64, 128, 256] (2 steps, lr 0.003):
      embedding:wte#0 after 2 step(s): slope +0.51 of log2 RMS vs log2 width
      embedding:wte#0 after 0 step(s): slope +0.50 of log2 RMS vs log2 width
      embedding:wte#0 after 1 step(s): slope +0.50 of log2 RMS vs log2 width
      residual:final after 0 step(s): slope +0.47 of log2 RMS vs log2 width
      residual:final after 1 step(s): slope +0.41 of log2 RMS vs log2 width

    activation   step  slope vs log2 width  band            result
    -----------  ----  -------------------  --------------  ------
    ...
    embedding    0     +0.02 .. +0.50       [-0.15, +0.15]  FAIL
    embedding    1     +0.02 .. +0.50       [-0.55, +0.40]  FAIL
    ...

The same gate from a shell (exit status 1 when not invariant)::

    fxparam coord-check --model mypkg.models:make --param completep
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxparam.testing import assert_depth_invariant, assert_not_invariant, assert_width_invariant

# --------------------------------------------------------------------------- your model


class Block(nn.Module):
    def __init__(self, width: int, head_dim: int = 16) -> None:
        super().__init__()
        self.heads = width // head_dim
        self.norm1, self.norm2 = nn.RMSNorm(width), nn.RMSNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width, bias=False)
        self.up, self.down = nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    def __init__(self, width: int, depth: int, vocab: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = nn.RMSNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def make(width: int = 128, depth: int = 2) -> nn.Module:
    return TinyLM(width, depth)


# --------------------------------------------------------------------------- the tests


def test_mup_keeps_activations_flat_across_width():
    assert_width_invariant(make, "mup", widths=[64, 128, 256], depth=2, steps=3)


def test_completep_keeps_the_residual_stream_flat_across_depth():
    # base width below the checked width, so the width rules are exercised too
    assert_depth_invariant(make, "completep", depths=[2, 4, 8], width=64, base_width=32)


def test_the_check_catches_sp():
    # negative controls: if these did not fail, the checks above could not fail either
    assert_not_invariant(make, "sp", widths=[64, 128, 256], depth=2)
    assert_not_invariant(make, "mup", axis="depth", depths=[2, 4, 8], width=64, base_width=32)
