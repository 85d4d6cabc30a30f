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
        if isinstance(module, torch.nn.MultiheadAttention) and isinstance(output, tuple):
            # (attn_output, attn_weights): the branch is attn_output; the weights are probabilities
            return (output[0] * self.factor, *output[1:])
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
    """Pre-hook/hook pair that overrides SDPA's scale inside one module (see :mod:`fxparam.lowering.sdpa`)."""

    fxparam_hook = True

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        from fxparam.lowering import sdpa

        sdpa.enter_module(self.scale)  # also installs the wrapper: a model unpickled in a fresh process works


class PopScale:
    fxparam_hook = True

    def __call__(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        from fxparam.lowering import sdpa

        sdpa.exit_module()


class ScaledLinear(torch.nn.Linear):
    """``nn.Linear`` computing ``out_mult * linear(in_mult * x)``, swapped in by class.

    Why not hooks: a hook multiplies the whole activation (an extra pass over B*T*d
    elements, forward and backward); scaling the weight instead touches d_in*d_out
    elements, and the result and every gradient are the same.  The cheaper side is
    chosen per call.  Under ``torch.compile`` the activations are scaled instead, so that
    Inductor fuses the multipliers (no kernels beyond the plain model's).  Parameters, ``state_dict`` keys and ``isinstance(m, nn.Linear)``
    are unchanged; only exact ``nn.Linear`` modules are swapped.
    """

    fxparam_in: float = 1.0
    fxparam_out: float = 1.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Compiled, scale the activations as the hooks did: Inductor fuses those multiplies
            # into the neighbouring pointwise kernels, whereas a scaled weight is a kernel of its
            # own (the matmul is an extern call) - forward and backward.
            x = input * self.fxparam_in if self.fxparam_in != 1.0 else input
            out = torch.nn.functional.linear(x, self.weight, self.bias)
            return out * self.fxparam_out if self.fxparam_out != 1.0 else out
        scale = self.fxparam_in * self.fxparam_out
        bias = self.bias
        if bias is not None and self.fxparam_out != 1.0:
            bias = bias * self.fxparam_out
        if self.weight.numel() <= input.numel():
            return torch.nn.functional.linear(input, self.weight * scale, bias)
        return torch.nn.functional.linear(input * scale, self.weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fxparam_in={self.fxparam_in:.6g}, fxparam_out={self.fxparam_out:.6g}"


def scale_linear(module: torch.nn.Module, *, inp: float = 1.0, out: float = 1.0) -> bool:
    """Fold multipliers into an exact ``nn.Linear`` by class swap; False if not applicable."""
    if type(module) not in (torch.nn.Linear, ScaledLinear):
        return False
    module.__class__ = ScaledLinear
    module.fxparam_in = getattr(module, "fxparam_in", 1.0) * float(inp)
    module.fxparam_out = getattr(module, "fxparam_out", 1.0) * float(out)
    return True
