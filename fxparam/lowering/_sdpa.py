"""Set the SDPA logit scale of modules that call ``F.scaled_dot_product_attention`` with
no scale attribute to change (nanoGPT style).

The attention module gets a pre-hook that pushes the planned scale and a hook that pops
it; ``F.scaled_dot_product_attention`` is wrapped once so that, only while a scale is
pushed, it uses that scale.  Outside transformed modules the wrapper passes through.
"""

from __future__ import annotations

import torch.nn.functional as F

_STACK: list[float] = []
_ORIGINAL = F.scaled_dot_product_attention


def push(scale: float) -> None:
    _STACK.append(scale)


def pop() -> None:
    if _STACK:
        _STACK.pop()


def _scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                  scale=None, **kwargs):
    if _STACK:
        scale = _STACK[-1]
    return _ORIGINAL(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, **kwargs)


def install() -> None:
    """Route ``torch.nn.functional.scaled_dot_product_attention`` through the override (idempotent)."""
    if F.scaled_dot_product_attention is not _scaled_dot_product_attention:
        F.scaled_dot_product_attention = _scaled_dot_product_attention
