"""SμPar masks on the module itself: deterministic bool buffers, zeroed weights, masked gradients.

How a mask stays exact, and where it lives:

- **The mask** is a bool buffer ``<param>_mask`` on the parameter's owning module (e.g.
  ``blocks.0.attn.qkv.weight_mask``), True = kept: one byte per weight entry, never a
  float copy.  It is non-persistent, so ``state_dict`` keys are unchanged, unless the
  plan's ``MaskPlan.store`` is set (``SuPar(store_masks=True)``), which adds one bool key
  per masked weight.
- **Its values** are a pure function of ``(seed, parameter FQN, flat index)``: a
  counter-based integer hash (two rounds of murmur3's 32-bit finaliser keyed by
  SHA-256 of ``f"{seed}:{fqn}"``) evaluated on the parameter's device in chunks.  The
  same seed gives the same masks in every process and on every device (integer
  arithmetic only, no RNG state, no float temporaries), so a checkpoint re-derives its
  masks instead of storing them.  Each entry is kept with probability ``density``
  independently (Bernoulli, like the reference code; no per-row balancing).
- **The weights**: masked entries are set to exactly 0 when the masks are applied
  (after re-initialisation) and after every ``load_state_dict`` (a post hook).
- **The gradients**: a tensor hook on the Parameter replaces each incoming gradient by
  ``grad * mask`` before it is accumulated into ``.grad``.  Gradient
  accumulation, clipping (also the norm it computes), SGD momentum and weight decay,
  and Adam's moments therefore only ever see exact zeros at masked entries, and
  AdamW's decoupled decay keeps 0 at 0: masked weights stay exactly 0 with no extra
  work per optimizer step.
- **Copies**: tensor hooks do not survive ``copy.deepcopy`` or ``torch.save(model)``,
  so a picklable forward pre-hook (:class:`MaskGuard`) re-installs the gradient hook on
  whichever Parameter object the module holds at its next forward, and re-zeroes the
  masked entries at the first forward after anything *else* wrote to the weight (an
  optimizer that does not preserve zeros such as Muon or Shampoo, a manual edit),
  detected with the tensor's version counter: a no-op otherwise.  The guard does
  nothing while compiling or exporting (the gradient hook still applies).

Limits: an optimizer that mixes coordinates (Muon, Shampoo) can still write non-zero
state for masked entries — only the weights are re-zeroed; sharded parameters
(FSDP2 DTensors) are not supported yet.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import LoweringError
from fxparam.plan import Plan

#: Buffer name of a parameter's mask on its owning module.
SUFFIX = "_mask"
#: Module attribute listing the masked parameters of a module: {param name: buffer name}.
REGISTRY_ATTR = "_fxparam_masks"
#: Elements hashed per chunk: bounds the int64 temporaries (a few x 8 MiB) for any weight size.
CHUNK = 1 << 20

_M32 = 0xFFFFFFFF


# ------------------------------------------------------------------ mask values


def mask_keys(seed: int, fqn: str) -> tuple[int, int, int]:
    """Three 32-bit keys from SHA-256 of ``f"{seed}:{fqn}"`` (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256(f"{seed}:{fqn}".encode()).digest()
    return tuple(int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(3))  # type: ignore[return-value]


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 for x in [0, 2**32) held in int64, without signed overflow: split c
    # into 16-bit halves so every product stays below 2**48.
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    # murmur3's 32-bit finaliser: a bijection of [0, 2**32) with full avalanche.
    h = h ^ (h >> 16)
    h = _mulmod32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mulmod32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def make_mask(
    shape: torch.Size | tuple[int, ...],
    density: float,
    seed: int,
    fqn: str,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The bool keep-mask of one parameter: a pure function of ``(seed, fqn, index)``.

    Args:
        shape: the parameter's shape; entries are numbered in row-major order.
        density: probability that an entry is kept, in (0, 1].
        seed: the SuPar seed.
        fqn: the parameter's fully qualified name (the owner's name for tied weights).
        device: where to compute and keep the mask (the parameter's device).

    Returns:
        A contiguous bool tensor of ``shape`` on ``device``; True = kept.

    Example:
        >>> m = make_mask((256, 256), 0.25, 0, "blocks.0.mlp.fc.weight")
        >>> round(m.float().mean().item(), 2)
        0.25
    """
    if not 0.0 < density <= 1.0:
        raise LoweringError(f"mask density for {fqn} must be in (0, 1], got {density}")
    keys = mask_keys(seed, fqn)
    threshold = min(round(density * 2**32), 2**32)  # keep iff hash < threshold
    out = torch.empty(shape, dtype=torch.bool, device=device)
    flat = out.view(-1)
    n = flat.numel()
    for start in range(0, n, CHUNK):
        idx = torch.arange(start, min(start + CHUNK, n), dtype=torch.int64, device=out.device)
        flat[start : start + idx.numel()] = index_hash(idx, keys) < threshold
    return out


def index_hash(idx: torch.Tensor, keys: tuple[int, int, int]) -> torch.Tensor:
    """Keyed 32-bit hash of non-negative int64 indices (values in [0, 2**32), as int64).

    Three rounds of murmur3's finaliser; an index's high word (beyond 2**32) is folded
    into the second key.  Integer arithmetic only, so CPU and GPU agree bit for bit.
    """
    k1, k2, k3 = keys
    lo, hi = idx & _M32, idx >> 32
    h = _fmix32(lo ^ k1)
    h = _fmix32(h ^ ((hi * 0x9E3779B9 + k2) & _M32))
    return _fmix32((h + k3) & _M32)


# ------------------------------------------------------------------ hooks


class MaskGrad:
    """Tensor hook on a masked Parameter: the gradient with masked entries set to exactly 0.

    Holds a weak reference to the owning module and reads the mask buffer at call time,
    so ``.to(device)`` (which replaces buffers) needs no re-registration.
    """

    def __init__(self, module: nn.Module, buffer: str) -> None:
        self.module = weakref.ref(module)
        self.buffer = buffer

    def __call__(self, grad: torch.Tensor) -> torch.Tensor | None:
        module = self.module()
        if module is None:
            return None
        # grad * mask (bool): masked entries become +-0.0, which Adam's moments, momentum and
        # clipping treat as exact zeros; 2x cheaper than torch.where(mask, grad, 0) on CPU.
        # (A non-finite gradient at a masked entry needs a non-finite activation, which
        # already poisons the kept entries of the same row and column.)
        return grad * getattr(module, self.buffer)


class MaskGuard:
    """Forward pre-hook (picklable) that keeps one masked parameter exact across copies.

    At each forward: if the module's Parameter is not the object carrying the gradient
    hook (after ``deepcopy``, ``torch.save(model)``, ``load_state_dict(assign=True)``),
    register :class:`MaskGrad` on it; if the tensor was written since the guard last
    zeroed it (version counter or storage changed), zero the masked entries again.
    """

    fxparam_hook = True

    def __init__(self, param: str, buffer: str) -> None:
        self.param = param
        self.buffer = buffer
        self._hooked: weakref.ref | None = None
        self._stamp: tuple[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # weak references do not pickle; a copy re-hooks and re-zeroes at its first forward
        return {"param": self.param, "buffer": self.buffer, "_hooked": None, "_stamp": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _current(self, module: nn.Module) -> nn.Parameter | None:
        param = module._parameters.get(self.param)
        if not isinstance(param, nn.Parameter) or param.device.type == "meta":
            return None  # e.g. torch.func.functional_call swapped in a plain tensor
        return param

    def hook_gradient(self, module: nn.Module, param: nn.Parameter) -> None:
        """Register the gradient hook on ``param`` unless it already carries it."""
        if self._hooked is not None and self._hooked() is param:
            return
        if param.requires_grad:
            param.register_hook(MaskGrad(module, self.buffer))
            self._hooked = weakref.ref(param)

    @torch.no_grad()
    def zero(self, module: nn.Module, *, fast: bool = False) -> None:
        """Set the masked entries of the parameter to 0, now.

        Args:
            module: the owning module.
            fast: multiply by the mask (about 2x cheaper; leaves -0.0 for negative values
                and keeps a non-finite value non-finite) instead of filling with +0.0.
                Used by the per-step guard, where masked entries are normally already 0.
        """
        param = self._current(module)
        if param is None:
            return
        mask = getattr(module, self.buffer)
        if fast:
            param.mul_(mask)
        else:
            param.masked_fill_(mask.logical_not(), 0)
        self._stamp = (param.data_ptr(), param._version)

    def __call__(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return
        param = self._current(module)
        if param is None:
            return
        self.hook_gradient(module, param)
        if self._stamp != (param.data_ptr(), param._version):
            self.zero(module, fast=True)

    def after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        """``load_state_dict`` post hook: masked entries of the loaded weight back to 0."""
        self.zero(module)

    def __repr__(self) -> str:
        return f"MaskGuard({self.param} * {self.buffer})"


# ------------------------------------------------------------------ lowering


def _split(fqn: str) -> tuple[str, str]:
    module, _, name = fqn.rpartition(".")
    return module, name


def stored_mask_keys(plan: Plan) -> list[str]:
    """The ``state_dict`` keys that stored masks add (empty unless ``store_masks=True``)."""
    out = []
    for fqn, mp in plan.masks.items():
        if mp.store:
            module, name = _split(fqn)
            out.append(f"{module}.{name}{SUFFIX}" if module else f"{name}{SUFFIX}")
    return out


def validate_masks(model: nn.Module, plan: Plan) -> None:
    """Check that every mask in ``plan`` can be applied to ``model``; mutate nothing.

    Raises:
        LoweringError: naming the FQN of a mask whose parameter is missing, a tied alias,
            not a floating-point Parameter, on the meta device, already masked, or whose
            density is outside (0, 1].
    """
    names = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules(remove_duplicate=False))
    cls = type(model).__name__
    for fqn, mp in plan.masks.items():
        module_name, pname = _split(fqn)
        param = names.get(fqn)
        owner = modules.get(module_name)
        if param is None or owner is None or owner._parameters.get(pname) is not param:
            raise LoweringError(
                f"the plan masks {fqn!r}, which is not a parameter of {cls}. Plans are per model "
                "architecture: rebuild the plan for this model (fxparam.plan(model, config))."
            )
        rules = plan.params.get(fqn)
        if rules is not None and rules.tied_to:
            raise LoweringError(
                f"the plan masks {fqn!r}, an alias of {rules.tied_to!r}: mask the owner {rules.tied_to!r} instead"
            )
        if not param.is_floating_point():
            raise LoweringError(f"cannot mask {fqn!r}: it is a {param.dtype} parameter, not floating point")
        if param.device.type == "meta":
            raise LoweringError(
                f"cannot mask {fqn!r}: it is on the meta device. Materialise the model (to_empty / load "
                "weights) before fxparam.transform or fxparam.apply_plan with SuPar."
            )
        if not 0.0 < mp.density <= 1.0:
            raise LoweringError(f"the plan masks {fqn!r} with density {mp.density}; it must be in (0, 1]")
        buffer = pname + SUFFIX
        if hasattr(owner, buffer) or pname in getattr(owner, REGISTRY_ATTR, {}):
            raise LoweringError(
                f"cannot mask {fqn!r}: module {module_name or cls!r} already has an attribute {buffer!r} "
                "(already masked by fxparam, or pruned with torch.nn.utils.prune). Use a fresh model."
            )


def apply_masks(model: nn.Module, plan: Plan, *, init: bool = True) -> None:
    """Install ``plan.masks`` on ``model``: mask buffers, gradient hooks, guards, load hooks.

    Validates everything and computes every mask before touching the model, so a failure
    leaves it unchanged.

    Args:
        model: the module being lowered (eager lowering).
        plan: the plan; only ``plan.masks`` is read.
        init: True when the caller re-initialises the weights next (it then calls
            :func:`enforce_masks`); False masks the current values now (e.g. a trained
            dense model, or a fresh one about to load a checkpoint).

    Example:
        >>> import torch.nn as nn
        >>> from fxparam.plan import MaskPlan, ParamPlan, Plan
        >>> model = nn.Sequential(nn.Linear(64, 64))
        >>> plan = Plan(params={"0.weight": ParamPlan(role="hidden"), "0.bias": ParamPlan(role="vector")},
        ...             masks={"0.weight": MaskPlan(density=0.25, seed=0)})
        >>> apply_masks(model, plan, init=False)
        >>> mask = model[0].weight_mask  # bool buffer, not in state_dict
        >>> bool((model[0].weight[~mask] == 0).all()), list(model.state_dict())
        (True, ['0.weight', '0.bias'])
    """
    validate_masks(model, plan)
    names = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules(remove_duplicate=False))
    masks = {
        fqn: make_mask(names[fqn].shape, mp.density, mp.seed, fqn, device=names[fqn].device)
        for fqn, mp in plan.masks.items()
    }
    for fqn, mask in masks.items():
        module_name, pname = _split(fqn)
        owner = modules[module_name]
        buffer = pname + SUFFIX
        owner.register_buffer(buffer, mask, persistent=plan.masks[fqn].store)
        registry = dict(getattr(owner, REGISTRY_ATTR, {}))
        registry[pname] = buffer
        setattr(owner, REGISTRY_ATTR, registry)
        guard = MaskGuard(pname, buffer)
        owner.register_forward_pre_hook(guard)
        owner.register_load_state_dict_post_hook(guard.after_load)
        guard.hook_gradient(owner, names[fqn])
        if not init:
            guard.zero(owner)


def _guards(model: nn.Module) -> list[tuple[nn.Module, MaskGuard]]:
    return [
        (module, hook)
        for module in model.modules()
        if getattr(module, REGISTRY_ATTR, None)
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, MaskGuard)
    ]


def enforce_masks(model: nn.Module) -> None:
    """Set every masked entry of ``model``'s masked parameters to exactly 0, now.

    Needed only after writing to masked weights outside training (the forward guard and
    the load hook cover the usual paths).

    Example:
        >>> import torch.nn as nn
        >>> from fxparam.plan import MaskPlan, ParamPlan, Plan
        >>> model = nn.Sequential(nn.Linear(64, 64, bias=False))
        >>> apply_masks(model, Plan(params={"0.weight": ParamPlan(role="hidden")},
        ...                         masks={"0.weight": MaskPlan(density=0.5, seed=0)}))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(1.0)
        >>> enforce_masks(model)
        >>> bool(model[0].weight.sum() == model[0].weight_mask.sum())
        True
    """
    for module, guard in _guards(model):
        guard.zero(module)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bool keep-masks installed on ``model``, keyed by parameter FQN.

    Example:
        >>> import torch.nn as nn
        >>> from fxparam.plan import MaskPlan, ParamPlan, Plan
        >>> model = nn.Sequential(nn.Linear(256, 256, bias=False))
        >>> apply_masks(model, Plan(params={"0.weight": ParamPlan(role="hidden")},
        ...                         masks={"0.weight": MaskPlan(density=0.25, seed=0)}))
        >>> {k: round(v.float().mean().item(), 2) for k, v in masks_of(model).items()}
        {'0.weight': 0.25}
    """
    out = {}
    for name, module in model.named_modules():
        for pname, buffer in getattr(module, REGISTRY_ATTR, {}).items():
            out[f"{name}.{pname}" if name else pname] = getattr(module, buffer)
    return out
