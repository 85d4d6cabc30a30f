"""Picklable forward hooks that apply the plan's multipliers.

Module-level classes (not closures) so that ``copy.deepcopy``, ``torch.save(model)``
and DDP/FSDP wrapping keep them.
"""

from __future__ import annotations

from typing import Any

import torch

from fxparam.errors import LoweringError


class OutputScale:
    """Forward hook: ``output * factor`` (embedding alpha_in, residual branch 1/m_L^alpha)."""

    fxparam_hook = True

    def __init__(self, factor: float, where: str) -> None:
        self.factor = float(factor)
        self.where = where

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output * self.factor
        raise LoweringError(
            f"fxparam: cannot scale the output of {self.where} ({type(module).__name__}): it returned "
            f"{type(output).__name__}, not a tensor"
        )

    def __repr__(self) -> str:
        return f"OutputScale({self.factor:.6g})"


class InputScale:
    """Forward pre-hook: first input ``* factor`` (readout alpha_out/m_d, as mup's MuReadout)."""

    fxparam_hook = True

    def __init__(self, factor: float, where: str) -> None:
        self.factor = float(factor)
        self.where = where

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        if args and isinstance(args[0], torch.Tensor):
            return (args[0] * self.factor, *args[1:])
        raise LoweringError(f"fxparam: cannot scale the input of {self.where}: its first argument is not a tensor")

    def __repr__(self) -> str:
        return f"InputScale({self.factor:.6g})"


class PushScale:
    """Pre-hook/hook pair that overrides SDPA's scale inside one module (see _sdpa)."""

    fxparam_hook = True

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        from fxparam.lowering import _sdpa

        _sdpa.push(self.scale)


class PopScale:
    fxparam_hook = True

    def __call__(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        from fxparam.lowering import _sdpa

        _sdpa.pop()
