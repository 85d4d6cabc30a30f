"""The one hook fxparam puts on ``torch.nn.functional.scaled_dot_product_attention``.

Attention modules that call ``F.scaled_dot_product_attention`` with no scale attribute to
change (nanoGPT style) get the planned muP logit scale (``alpha_attn / d_head``, Tensor
Programs V) through a scope: the eager lowering's pre-hook enters :func:`override_scale`
for the module's forward, and its hook leaves it.  Tools that need the attention logits
(the coordinate check) read them through :func:`observe`.  Both go through a single
wrapper of ``F.scaled_dot_product_attention``, installed once (:func:`install`); outside
an override scope and with no observer it calls torch's function unchanged.

The wrapper sees only calls that look ``F.scaled_dot_product_attention`` up at call time
(a model that did ``from torch.nn.functional import scaled_dot_product_attention`` at
import keeps torch's own function); the eager lowering's scope (:func:`enter_module` /
:func:`exit_module`) also enters a TorchFunctionMode, so the planned scale reaches
by-name calls too (observers still see only the wrapper's calls).

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> q = k = v = torch.randn(1, 1, 4, 8)
    >>> seen = []
    >>> with override_scale(0.5), observe(lambda q, k, scale: seen.append(scale)):
    ...     out = F.scaled_dot_product_attention(q, k, v)
    >>> seen
    [0.5]
    >>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v, scale=0.5))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["Observer", "TORCH_SDPA", "current_scale", "install", "observe", "override_scale", "pop", "push"]

#: ``observer(query, key, scale)``: called before every SDPA call inside :func:`observe`,
#: with the logit scale the call uses (the override, the call's ``scale=``, or 1/sqrt(E)).
Observer = Callable[[torch.Tensor, torch.Tensor, float], None]

_STACK: list[float] = []
_OBSERVERS: list[Observer] = []
_ORIGINAL = torch._C._nn.scaled_dot_product_attention  # torch's own: F's attribute may already be a wrapper
#: torch's own SDPA, the target a captured graph records whatever wrapper ``F`` holds (ours included)
TORCH_SDPA = _ORIGINAL


def push(scale: float) -> None:
    """Enter an override scope: SDPA calls use ``scale`` until the matching :func:`pop`."""
    _STACK.append(float(scale))


def pop() -> None:
    """Leave the innermost override scope (no-op when none is open)."""
    if _STACK:
        _STACK.pop()


def current_scale(scale: float | None = None) -> float | None:
    """The logit scale an SDPA call passing ``scale=`` uses now (the innermost override wins)."""
    return _STACK[-1] if _STACK else scale


def _scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                  scale=None, **kwargs):
    scale = current_scale(scale)
    if _OBSERVERS:
        effective = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
        for fn in list(_OBSERVERS):
            fn(query, key, effective)
    return _ORIGINAL(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, **kwargs)


def install() -> None:
    """Route ``torch.nn.functional.scaled_dot_product_attention`` through fxparam's wrapper (idempotent)."""
    if F.scaled_dot_product_attention is not _scaled_dot_product_attention:
        F.scaled_dot_product_attention = _scaled_dot_product_attention


@contextmanager
def override_scale(scale: float) -> Iterator[None]:
    """SDPA calls inside the block use logit scale ``scale`` (installs the wrapper).

    Args:
        scale: the logit scale (muP: ``alpha_attn / d_head``), replacing the call's own.
    """
    install()
    push(scale)
    try:
        yield
    finally:
        pop()


@contextmanager
def observe(fn: Observer) -> Iterator[None]:
    """Call ``fn(query, key, scale)`` before every SDPA call inside the block (installs the wrapper).

    Args:
        fn: the observer; ``query``/``key`` are SDPA's ``(..., L, E)`` / ``(..., S, E)``
            inputs and ``scale`` the logit scale the call uses.
    """
    install()
    _OBSERVERS.append(fn)
    try:
        yield
    finally:
        _OBSERVERS.remove(fn)


class _ModuleScale(torch.overrides.TorchFunctionMode):
    """Inside one attention module's forward: every SDPA call runs with the planned ``scale``.

    A :class:`torch.overrides.TorchFunctionMode` sees torch's SDPA however the module reached
    it (``F.scaled_dot_product_attention`` looked up at call time, or the function bound by
    name at import, ``from torch.nn.functional import scaled_dot_product_attention``).
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = dict(kwargs or {})
        if func is _ORIGINAL:
            if len(args) > 7:
                kwargs["enable_gqa"] = args[7]
            args = args[:6]
            kwargs["scale"] = self.scale
        return func(*args, **kwargs)


_MODES: list[_ModuleScale | None] = []


def enter_module(scale: float) -> None:
    """Open an attention module's scope (the eager lowering's pre-hook): SDPA uses ``scale``.

    Installs the wrapper (so a model unpickled in a fresh process works) and, outside
    ``torch.compile``, a :class:`_ModuleScale` mode that also covers SDPA imported by name.
    """
    install()
    push(scale)
    mode = None
    if not torch.compiler.is_compiling():
        mode = _ModuleScale(scale)
        mode.__enter__()
    _MODES.append(mode)


def exit_module() -> None:
    """Close the innermost :func:`enter_module` scope (the eager lowering's post-hook, always called)."""
    pop()
    if _MODES:
        mode = _MODES.pop()
        if mode is not None:
            mode.__exit__(None, None, None)
