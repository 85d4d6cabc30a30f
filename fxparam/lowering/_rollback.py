"""All or nothing: snapshot a model before a lowering mutates it, restore it exactly on failure.

A lowering mutates a model in several steps (norm class swaps, attention attributes,
forward hooks, ``ScaledLinear`` class swaps, mask buffers and gradient hooks, the
re-init, the recorded plan).  If any step raises - or the post-lowering
:func:`fxparam.verify` finds a planned multiplier not in effect - the model must be
left exactly as the user handed it, so that a retry neither fails on leftovers nor
double-scales.  :func:`all_or_nothing` takes a :class:`Snapshot` before the first
mutation and restores it on any exception:

- every module's class and instance ``__dict__`` (attributes fxparam set are removed,
  attributes it overwrote are put back), and the *contents* of its dict/set containers
  (``_parameters``, ``_buffers``, ``_modules``, every hook dict) restored in place, so
  ``RemovableHandle``s and other references to those containers stay valid;
- every Parameter and buffer: same object (identity), same values (bit-identical),
  same ``requires_grad``, same tensor-level gradient hooks (``_backward_hooks``);
- fxparam's process-wide optimizer-check tables (``fxparam.plan.PLANNED_PARAMS`` /
  ``PLANNED_LR_MULT``) for the model's Parameters.

Cost: one host-memory copy of every non-meta parameter and buffer while the lowering runs
(only when it writes values: ``init=True`` or SμPar masks), from which the values are
restored; accelerator memory is not used for it, and meta-device models cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import FxparamError, LoweringError

__all__ = ["Snapshot", "all_or_nothing", "inner_module"]


def _copy_container(value: Any) -> Any:
    """A shallow copy of a dict/set container (``None`` for anything else)."""
    if isinstance(value, dict):
        return type(value).copy(value) if hasattr(type(value), "copy") else dict(value)
    if isinstance(value, set):
        return set(value)
    return None


class Snapshot:
    """The restorable state of ``model`` (see the module docstring for what is kept).

    Args:
        model: the module tree to snapshot (every submodule, shared ones once).
        values: clone parameter and buffer values (False when the caller guarantees no
            value is written, e.g. ``init=False`` lowerings without masks).
    """

    def __init__(self, model: nn.Module, *, values: bool = True) -> None:
        self.modules: list[tuple[nn.Module, type, dict[str, Any], dict[str, Any]]] = []
        for module in model.modules():
            attrs = dict(module.__dict__)
            containers = {k: c for k, v in attrs.items() if (c := _copy_container(v)) is not None}
            self.modules.append((module, type(module), attrs, containers))
        self.tensors: list[tuple[torch.Tensor, torch.Tensor | None, bool, Any]] = []
        seen: set[int] = set()
        for module in model.modules():
            for t in [*module._parameters.values(), *module._buffers.values()]:
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                saved = None
                if values and t.device.type != "meta":  # accelerator tensors are kept in host memory
                    saved = t.detach().to("cpu", copy=True)
                hooks = getattr(t, "_backward_hooks", None)
                self.tensors.append((t, saved, t.requires_grad, None if hooks is None else dict(hooks)))
        from fxparam.plan import PLANNED_PARAMS

        self._watched = {id(t) for t, *_ in self.tensors if id(t) in PLANNED_PARAMS}

    @torch.no_grad()
    def restore(self) -> None:
        """Put every module, parameter and buffer back as it was at snapshot time."""
        for module, cls, attrs, containers in self.modules:
            if type(module) is not cls:
                module.__class__ = cls
            current = module.__dict__
            for key in [k for k in current if k not in attrs]:
                del current[key]
            for key, value in attrs.items():
                current[key] = value
                if key in containers:
                    value.clear()
                    value.update(containers[key])
        from fxparam.plan import PLANNED_LR_MULT, PLANNED_PARAMS

        for t, saved, requires_grad, hooks in self.tensors:
            if saved is not None and (t.shape != saved.shape or not torch.equal(t.detach().cpu(), saved)):
                if t.shape != saved.shape:
                    t.data = saved.to(t.device)
                else:
                    t.detach().copy_(saved)
            if t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)
            current = getattr(t, "_backward_hooks", None)
            if hooks is None:
                if current:
                    t._backward_hooks = None
            elif current is not None:
                current.clear()
                current.update(hooks)
            if id(t) not in self._watched:
                PLANNED_PARAMS.pop(id(t), None)
                PLANNED_LR_MULT.pop(id(t), None)


@contextmanager
def all_or_nothing(model: nn.Module, *, values: bool = True) -> Iterator[Snapshot]:
    """Run a block that mutates ``model``; on any exception restore ``model`` exactly, then re-raise.

    Args:
        model: the module the block mutates.
        values: also snapshot parameter/buffer values (needed when the block re-initialises
            or masks weights).

    Raises:
        FxparamError: what the block raised, after the restore.
        LoweringError: any other exception of the block, after the restore (the original as
            ``__cause__``).

    Example:
        >>> model = nn.Linear(4, 4)
        >>> before = model.weight.detach().clone()
        >>> try:
        ...     with all_or_nothing(model):
        ...         _ = model.register_forward_hook(lambda m, a, out: out * 2)
        ...         raise RuntimeError("a lowering step failed")
        ... except LoweringError as exc:
        ...     print(type(exc.__cause__).__name__)
        RuntimeError
        >>> torch.equal(model.weight, before), len(model._forward_hooks)
        (True, 0)
    """
    snapshot = Snapshot(model, values=values)
    try:
        yield snapshot
    except FxparamError:
        snapshot.restore()
        raise
    except Exception as exc:
        snapshot.restore()
        raise LoweringError(
            f"fxparam could not lower the plan onto {type(model).__name__}: {type(exc).__name__}: {exc}. "
            "The model was restored unchanged (values, Parameters, classes, hooks); nothing was recorded. "
            "Check the plan (fxparam.plan(model, ...).summary()) for the parameter or module named above, "
            "and override its role or report the model."
        ) from exc
    except BaseException:
        snapshot.restore()
        raise


def inner_module(model: nn.Module, *, init: bool = False, mutate: bool = False) -> nn.Module:
    """The user's module to analyse or transform, through wrappers fxparam can see through.

    ``torch.compile``'s ``OptimizedModule`` and ``DistributedDataParallel`` are unwrapped
    (the wrapper object itself is never written to).  Wrappers that own or rename the
    Parameters are refused with the fix: PEFT models (LoRA layers wrap the user's Linear
    modules; transform the base model before ``get_peft_model``) and FSDP (shards are
    not the model's tensors; transform before ``fully_shard`` / ``FullyShardedDataParallel``).

    Args:
        model: the model as the user handed it.
        init: the transform re-initialises weights (refused inside DDP: each rank would
            draw different weights after DDP's initial broadcast).
        mutate: the caller will modify the module (transform / apply_plan), not only read it.

    Returns:
        The inner ``nn.Module``.

    Raises:
        LoweringError: a PEFT or FSDP wrapper, ``init=True`` inside DDP, not an ``nn.Module``
            (``torch.compile`` of an already compiled module returns a function), or a module
            whose ``forward`` is patched on the instance (``accelerate``'s mixed-precision
            ``prepare`` or ``dispatch_model`` / ``add_hook_to_module``: the patched forward is
            bound to the unpatched class, so fxparam's class swaps would be bypassed).
    """
    import inspect as _inspect

    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, nn.Module):
        bound = getattr(_inspect.unwrap(model), "__self__", None) if callable(model) else None
        inside = f" (it wraps the {type(bound).__name__} module's forward)" if isinstance(bound, nn.Module) else ""
        raise LoweringError(
            f"fxparam needs an nn.Module, got {type(model).__name__} {getattr(model, '__qualname__', '')}{inside}: "
            "torch.compile of an already compiled module returns a function. Transform the module itself, "
            "then compile it once: model = fxparam.transform(model, ...); model = torch.compile(model, mode=...)."
        )
    cls = type(model).__name__
    if hasattr(model, "peft_config") and hasattr(model, "base_model"):
        raise LoweringError(
            f"{cls} is a PEFT-wrapped model: its LoRA layers wrap the base model's Linear modules and "
            "rename their parameters, so a plan for the base model does not apply. Transform the base model "
            "first, then wrap it: model = fxparam.transform(base, ...); model = get_peft_model(model, lora_config)."
        )
    for m in model.modules():
        if type(m).__name__.startswith(("FullyShardedDataParallel", "FSDP")):
            raise LoweringError(
                f"{cls} is (or contains {type(m).__name__}) an FSDP-sharded module: its Parameters are shards. "
                "Call fxparam.transform(model, ...) before fully_shard / FullyShardedDataParallel."
            )
    inner = model
    while True:
        if isinstance(inner, DistributedDataParallel):
            if mutate and init:
                raise LoweringError(
                    f"{cls} is wrapped in DistributedDataParallel, which broadcast rank 0's weights when it "
                    "was built: re-initialising now would give each rank different weights. Transform before "
                    "wrapping in DDP, or pass init=False (e.g. before loading a checkpoint)."
                )
            inner = inner.module
        elif isinstance(inner.__dict__.get("_modules", {}).get("_orig_mod"), nn.Module):  # torch.compile
            inner = inner._modules["_orig_mod"]
        else:
            patched = [name or "<root>" for name, m in inner.named_modules() if callable(m.__dict__.get("forward"))]
            if patched:
                raise LoweringError(
                    f"{type(inner).__name__}: {len(patched)} module(s) have a forward patched on the instance "
                    f"({', '.join(patched[:3])}{', ...' if len(patched) > 3 else ''}), e.g. by accelerate's prepare(mixed_precision=...) or "
                    "dispatch_model / add_hook_to_module: such a forward is bound to the class it was patched over and "
                    "cannot be captured or scaled. Transform the plain model first, then prepare / dispatch it: "
                    "model = fxparam.transform(model, ...); model = accelerator.prepare(model)."
                )
            return inner


def model_shapes(model: nn.Module) -> dict[str, list[int]]:
    """The analysis fingerprint stored in ``Plan.model_shapes``: every parameter FQN and its shape."""
    return {n: list(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}


def check_model_shapes(model: nn.Module, plan: Any) -> None:
    """Refuse a plan built for a model of other shapes (another width or depth of the same class).

    Raises:
        LoweringError: naming the first parameters whose shape differs, the plan's width and
            the fix (build the plan on this model).
    """
    planned = getattr(plan, "model_shapes", None)
    if not planned:
        return
    actual = model_shapes(model)
    if actual == planned:
        return
    diff = [f"{n}: plan {planned.get(n)} vs model {actual.get(n)}"
            for n in sorted(set(planned) | set(actual)) if planned.get(n) != actual.get(n)]
    raise LoweringError(
        f"this plan was built for another {plan.model_class or 'model'} (width {plan.width}, depth {plan.depth}): "
        f"{len(diff)} parameter shape(s) differ, e.g. {'; '.join(diff[:3])}. Its multipliers (m_d, m_L) and "
        "init stds would be wrong here: build the plan on this model with fxparam.plan(model, config, ...) "
        "(the same config gives the right plan for every width and depth)."
    )


def fxparam_state(model: nn.Module) -> list[str]:
    """Modules that carry fxparam's forward-time state (the transformed marker that survives
    ``del model._fxparam_plan``): ScaledLinear or swapped-norm classes, fxparam hooks, SμPar masks."""
    found = []
    for name, m in model.named_modules():
        cls = type(m)
        hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if (cls.__module__.startswith(("fxparam.lowering", "fxparam.kernels")) or any(getattr(h, "fxparam_hook", False) for h in hooks)
                or getattr(m, "_fxparam_masks", None)):
            found.append(name or "<root>")
    return found


def require_plan(model: nn.Module, what: str) -> None:
    """Refuse, with the right diagnosis, a model that carries fxparam's state but no recorded plan.

    ``plan_of`` alone would call it "not transformed"; its hooks and ``ScaledLinear`` classes
    still scale it (the plan attribute was deleted, e.g. ``del model._fxparam_plan``).

    Raises:
        LoweringError: naming the modules with fxparam's state and how to put the plan back.
    """
    from fxparam.plan import PLAN_ATTR

    if getattr(model, PLAN_ATTR, None) is not None:
        return
    state = fxparam_state(model)
    if state:
        raise LoweringError(
            f"{what}: {type(model).__name__} is transformed - {len(state)} module(s) carry fxparam's forward-time "
            f"scaling ({', '.join(state[:3])}{', ...' if len(state) > 3 else ''}) - but its recorded plan is gone "
            f"(was `{PLAN_ATTR}` deleted?), so there is nothing to check or absorb it against. Put the plan back "
            "with fxparam.plan.attach(model, plan) (the plan fxparam.plan(...) builds for this model and config, "
            "or the checkpoint's), or rebuild the model and transform it once."
        )

