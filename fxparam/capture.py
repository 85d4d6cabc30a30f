"""Capture a model as an ATen graph without touching its memory or its weights.

Why a meta *skeleton*: analysis needs shapes and data flow, never values, so we copy
the module tree with every parameter and buffer replaced by a ``meta`` tensor (no
memory, cost independent of width) and export that.  Repeated blocks (a ModuleList
of identical layers) are cut to two copies, so capture time does not grow with
depth; facts about block 1 are mapped onto blocks 2..L-1 by name afterwards.  If the
shortened model does not run (a forward that indexes ``self.layers[i]`` up to a
configured depth, say), capture retries at full depth.
"""

from __future__ import annotations

import copy
import inspect as _inspect
import os
import re
import sysconfig
import time
import traceback
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import CaptureError

#: Repeated containers with more children than this are shortened for capture.
KEEP_REPEATS = 2


@dataclass
class Capture:
    """The exported graph of a model's meta skeleton, plus what maps it back to the model."""

    model_class: str
    graph: torch.fx.Graph
    node_param: dict[str, str]  # placeholder node name -> parameter FQN (skeleton naming)
    node_buffer: dict[str, str]  # placeholder node name -> buffer FQN
    user_inputs: list[str]  # placeholder node names of user inputs
    module_classes: dict[str, type]  # skeleton module FQN -> class
    reduced: dict[str, tuple[int, int]] = field(default_factory=dict)  # container FQN -> (kept, total)
    method: str = "export"
    seconds: float = 0.0
    modules: dict[str, nn.Module] = field(default_factory=dict)  # skeleton modules (meta tensors)

    def skeleton_name(self, fqn: str) -> str:
        """The skeleton FQN standing for a model FQN (blocks past the kept ones map to the last kept)."""
        for prefix, (kept, _total) in self.reduced.items():
            head = prefix + "."
            if fqn.startswith(head):
                index, _, rest = fqn[len(head) :].partition(".")
                if index.isdigit() and int(index) >= kept:
                    fqn = f"{prefix}.{kept - 1}" + (f".{rest}" if rest else "")
        return fqn

    def real_names(self, fqn: str) -> list[str]:
        """Model FQNs a skeleton FQN stands for (one, or one per repeated block)."""
        names = [fqn]
        for prefix, (kept, total) in self.reduced.items():
            out: list[str] = []
            for name in names:
                last = f"{prefix}.{kept - 1}"
                if name == last or name.startswith(last + "."):
                    rest = name[len(last) :]
                    out.extend(f"{prefix}.{i}{rest}" for i in range(kept - 1, total))
                else:
                    out.append(name)
            names = out
        return names


# --------------------------------------------------------------------------- skeleton


def _is_repeated(container: nn.Module) -> bool:
    children = list(container.children())
    if len(children) <= KEEP_REPEATS or not isinstance(container, (nn.ModuleList, nn.Sequential)):
        return False
    if isinstance(container, nn.Sequential):
        return False  # Sequential feeds each child into the next: cutting it changes shapes downstream
    first = children[0]
    signature = [(n, tuple(p.shape)) for n, p in first.named_parameters()]
    return all(
        type(c) is type(first) and [(n, tuple(p.shape)) for n, p in c.named_parameters()] == signature
        for c in children[1:]
    )


def _to_meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta")


def meta_skeleton(model: nn.Module, *, shorten: bool = True) -> tuple[nn.Module, dict[str, tuple[int, int]]]:
    """A structural copy of ``model`` on the meta device; the model itself is not touched.

    Modules are shallow-copied (their other attributes are shared, read-only), so this
    costs no memory proportional to the weights.  Tied parameters stay tied.
    """
    memo: dict[int, torch.Tensor] = {}
    reduced: dict[str, tuple[int, int]] = {}

    def meta_of(t: torch.Tensor, as_param: bool) -> torch.Tensor:
        if id(t) not in memo:
            m = _to_meta(t.detach())
            memo[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if as_param else m
        return memo[id(t)]

    def clone(mod: nn.Module, prefix: str) -> nn.Module:
        new = copy.copy(mod)
        # Write the copy's own __dict__, never through its __setattr__: a wrapper such as
        # torch.compile's OptimizedModule forwards attribute writes to the user's module.
        d = new.__dict__ = dict(mod.__dict__)
        d["_parameters"] = {k: (None if p is None else meta_of(p, True)) for k, p in mod._parameters.items()}
        d["_buffers"] = {k: (None if b is None else meta_of(b, False)) for k, b in mod._buffers.items()}
        for key, value in list(d.items()):  # plain tensor attributes, e.g. cached masks
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                d[key] = meta_of(value, False)
        d["_forward_hooks"] = type(mod._forward_hooks)()
        d["_forward_pre_hooks"] = type(mod._forward_pre_hooks)()
        children = list(mod._modules.items())
        if shorten and _is_repeated(mod):
            reduced[prefix] = (KEEP_REPEATS, len(children))
            children = children[:KEEP_REPEATS]
        d["_modules"] = {
            k: (None if c is None else clone(c, f"{prefix}.{k}" if prefix else k)) for k, c in children
        }
        d["training"] = False
        return new

    return clone(model, ""), reduced


# --------------------------------------------------------------------------- inputs


def _meta_inputs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _to_meta(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_meta_inputs(v) for v in value)
    if isinstance(value, dict):
        return {k: _meta_inputs(v) for k, v in value.items()}
    return value


def default_example_inputs(model: nn.Module) -> tuple[tuple, dict]:
    """Inputs for models that can describe their own: ``example_inputs()`` or an HF config."""
    if callable(getattr(model, "example_inputs", None)):
        args = model.example_inputs()
        return (tuple(args) if isinstance(args, (tuple, list)) else (args,)), {}
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int):
        ids = torch.zeros(2, 8, dtype=torch.long)
        params = _inspect.signature(model.forward).parameters
        if "input_ids" not in params:  # nanoGPT-style forward(idx, targets=None)
            return (ids,), {}
        kwargs: dict[str, Any] = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
            kwargs["decoder_input_ids"] = ids  # T5, BART...: the decoder needs its own ids
        if "use_cache" in params:
            kwargs["use_cache"] = False
        return (), kwargs
    raise CaptureError(
        f"fxparam cannot guess example inputs for {type(model).__name__}: it has no "
        "`example_inputs()` method and no `config.vocab_size`. Pass example_inputs=(tensor, ...) "
        "(or a dict of keyword arguments) with the shapes and dtypes its forward expects; "
        "small sizes are best (they are only used on the meta device)."
    )


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) == 2 and isinstance(example_inputs[1], dict) and isinstance(example_inputs[0], (tuple, list)):
            return tuple(example_inputs[0]), dict(example_inputs[1])
        return tuple(example_inputs), {}
    raise CaptureError(
        f"example_inputs must be a tensor, a tuple of tensors, a dict of keyword arguments, "
        f"or (args, kwargs); got {type(example_inputs).__name__}"
    )


# --------------------------------------------------------------------------- errors


_TORCH_DIR = os.path.dirname(torch.__file__)
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]


def _user_frame(exc: BaseException) -> str | None:
    """The innermost traceback frame that is not inside torch or fxparam: the user's line."""
    here = os.path.dirname(__file__)
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if frame.filename.startswith((_TORCH_DIR, here, _STDLIB_DIR)):
            continue
        line = (frame.line or "").strip()
        return f"{frame.filename}:{frame.lineno} in {frame.name}: `{line}`"
    return None


def _explain(exc: BaseException) -> str:
    text = str(exc)
    data_dependent = (
        "data-dependent" in text
        or "GuardOnDataDependent" in type(exc).__name__
        or "meta tensors" in text
        or "Could not guard" in text
    )
    if data_dependent:
        return (
            "the forward branches in Python on tensor values (data-dependent control flow), "
            "which a graph capture cannot follow. Replace the branch with tensor ops "
            "(torch.where / masking / torch.cond) or move the check out of forward"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first[:300]}"


# --------------------------------------------------------------------------- capture


def _flat_tensors(value: Any, out: list[torch.Tensor], depth: int = 0) -> None:
    if depth > 6:
        return
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _flat_tensors(v, out, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            _flat_tensors(v, out, depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, nn.Module):
        for v in vars(value).values():
            _flat_tensors(v, out, depth + 1)


def _flatten_outputs(skeleton: nn.Module) -> None:
    """Make the skeleton return a flat tuple of tensors (only the copy is changed)."""
    forward = type(skeleton).forward

    def flat_forward(self: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        _flat_tensors(forward(self, *args, **kwargs), out)
        return tuple(out)

    skeleton.forward = types.MethodType(flat_forward, skeleton)


def _export(skeleton: nn.Module, args: tuple, kwargs: dict):
    return torch.export.export(skeleton, args, kwargs, strict=False)


def capture(model: nn.Module, example_inputs: Any = None) -> Capture:
    """Export a meta skeleton of ``model`` to an ATen graph.

    Args:
        model: any ``nn.Module``; it is never modified.
        example_inputs: a tensor, a tuple of tensors, a dict of keyword arguments or
            ``(args, kwargs)``.  Optional for models with ``example_inputs()`` (the
            reference GPT) or an HF ``config.vocab_size``.

    Raises:
        CaptureError: naming the model class, the failing source line and what to try.
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"fxparam needs a torch.nn.Module, got {type(model).__name__}")
    from fxparam.plan import unwrap

    model = unwrap(model)  # the user's module inside torch.compile / DDP wrappers
    if example_inputs is None:
        args, kwargs = default_example_inputs(model)
    else:
        args, kwargs = _split_inputs(example_inputs)
    args, kwargs = _meta_inputs(args), _meta_inputs(kwargs)

    start = time.perf_counter()
    errors: list[BaseException] = []
    # 1. shortened skeleton, 2. full depth, 3. full depth with outputs flattened to a
    # tuple of tensors (export rejects outputs that are not pytrees, e.g. custom classes).
    attempts = [(True, False), (False, False), (False, True)]
    for shorten, flatten in attempts:
        skeleton, reduced = meta_skeleton(model, shorten=shorten)
        if shorten and not reduced:
            continue
        if flatten:
            _flatten_outputs(skeleton)
        try:
            with torch.no_grad():
                ep = _export(skeleton, args, kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - any failure becomes a CaptureError below
            errors.append(exc)
    else:
        exc = errors[-2] if len(errors) >= 2 else errors[-1]  # the full-depth error is the informative one
        where = _user_frame(exc)
        raise CaptureError(
            f"fxparam could not capture {type(model).__name__}: {_explain(exc)}."
            + (f"\n  where: {where}" if where else "")
            + "\n  what to do: check that example_inputs match forward's signature (pass "
            "example_inputs=... explicitly), and that forward runs on the meta device "
            "with no .item()/bool() on tensors."
        ) from exc
    method = "export" if shorten else ("export (full depth, flattened outputs)" if flatten else "export (full depth)")

    sig = ep.graph_signature
    modules = dict(skeleton.named_modules())
    module_classes = {name: type(m) for name, m in modules.items()}
    return Capture(
        model_class=type(model).__name__,
        graph=ep.graph,
        node_param=dict(sig.inputs_to_parameters),
        node_buffer=dict(sig.inputs_to_buffers),
        user_inputs=list(sig.user_inputs),
        module_classes=module_classes,
        reduced=reduced if shorten else {},
        method=method,
        seconds=time.perf_counter() - start,
        modules=modules,
    )


_INDEX = re.compile(r"\[(\d+)\]")


def clean_module_path(path: str) -> str:
    """Normalise an ``nn_module_stack`` path (``L['self'].h[0].attn`` -> ``h.0.attn``)."""
    path = path.replace("L['self']", "").replace("L__self__", "")
    path = _INDEX.sub(r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    return path.strip(".").replace("..", ".")


def iter_module_stack(node: torch.fx.Node) -> Iterable[str]:
    """Module FQNs owning ``node``, outermost first (empty for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _cls in stack.values():
        yield clean_module_path(path)
