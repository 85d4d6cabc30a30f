"""0.1 name of :mod:`fxparam.lowering.sdpa` (the public, single SDPA hook); kept importable."""

from fxparam.lowering.sdpa import _STACK, install, pop, push

__all__ = ["_STACK", "install", "pop", "push"]
