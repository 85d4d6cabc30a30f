"""Graph lowering: the plan as explicit nodes of a ``torch.fx.GraphModule``.

``lower_graph`` exports the model (non-strict ``torch.export`` on its real tensors), takes
the runnable ``ep.module()`` and rewrites its graph:

- module-output multipliers become ``mul`` nodes after the one tensor that leaves the
  module's nodes (found through ``nn_module_stack``), one per call of the module;
- readout input multipliers (``Plan.input_multipliers``) become ``mul`` nodes on the one
  activation that enters the module (parameters and buffers are not activations);
- attention logit scales are written into the ``scale`` keyword of the module's
  ``scaled_dot_product_attention`` nodes.

The same rewrite (:func:`apply_plan_to_graph`) runs on Dynamo's torch-IR graphs in the
compile lowering (``fxparam/lowering/compile.py``), so both read the plan the same way.

Limits (checked, each with a :class:`~fxparam.LoweringError` that names the fix):

- input shapes are specialised to ``example_inputs`` unless ``dynamic=True``; the input
  dtypes and devices, the parameters' dtype and device, and train/eval mode are baked in
  at export time (``gm.to(...)`` is refused at the next call: lower again instead);
- attention written by hand (matmul, scale, softmax) cannot be rescaled here: use the
  eager lowering (``fxparam.transform``), which sets the module's scale attribute;
- GNS norm swaps are not supported in the graph lowering (they swap modules for ones with
  their own backward): use eager.
- SμPar masks are installed on the GraphModule's submodules exactly as the eager lowering
  installs them (bool buffers, masked entries zeroed, a gradient hook per masked
  Parameter, re-zeroing after ``load_state_dict``); the GraphModule runs their guards at
  each call.  The model the GraphModule was exported from does not get them.
"""

from __future__ import annotations

import inspect as _inspect
import operator
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils import _pytree as pytree

from fxparam.capture import _split_inputs, clean_module_path, default_example_inputs
from fxparam.errors import CaptureError, LoweringError
from fxparam.lowering.sdpa import TORCH_SDPA
from fxparam.plan import Plan, attach, input_site

__all__ = [
    "GraphRewrite",
    "apply_plan_to_graph",
    "check_supported",
    "frame_parameter_names",
    "lower_graph",
    "multiplier_nodes",
]

#: Module names that wrappers put in front of the user's FQNs in a compiled graph.
_WRAPPERS = ("_orig_mod", "module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
#: The root of a Dynamo source path: ``L['self']``, or ``L['args'][0]`` behind a decorated forward.
_ROOT = re.compile(r"^L\[['\"][^'\"]*['\"]\](\[\d+\])*")
# torch's own SDPA, not F's attribute at import time: once fxparam's SDPA wrapper is installed
# (an eager transform in the same process), F's attribute is the wrapper that graphs never record
_SDPA_TARGETS = (TORCH_SDPA, torch.ops.aten.scaled_dot_product_attention.default)


# --------------------------------------------------------------------------- the rewrite


@dataclass
class GraphRewrite:
    """What :func:`apply_plan_to_graph` did to one graph.

    Attributes:
        outputs: module FQN -> number of output ``mul`` nodes inserted (one per call).
        inputs: module FQN -> number of input ``mul`` nodes inserted.
        attention: attention module FQN -> number of SDPA nodes whose ``scale`` was set.
    """

    outputs: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)
    attention: dict[str, int] = field(default_factory=dict)

    @property
    def applied(self) -> set[str]:
        """Plan sites this rewrite applied (labels as :meth:`fxparam.plan.Plan.forward_sites`)."""
        return set(self.outputs) | {input_site(m) for m in self.inputs} | set(self.attention)


def _value(node: fx.Node) -> Any:
    meta = node.meta
    return meta.get("val", meta.get("example_value"))


def _is_tensor(node: fx.Node) -> bool:
    if node.op == "output":
        return False
    if "val" not in node.meta and "example_value" not in node.meta:
        return True  # no metadata (a hand-built graph): assume a tensor
    return isinstance(_value(node), torch.Tensor)


def _is_state(node: fx.Node) -> bool:
    """Parameters, buffers and constants: ``get_attr``, or a lifted placeholder in a Dynamo graph."""
    if node.op == "get_attr":
        return True
    if node.op != "placeholder":
        return False
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = getattr(source, "name", None)
    text = (name() if callable(name) else name) or node.name  # Source.name is a property in recent torch
    return "_parameters" in text or "_buffers" in text


def _module_paths(graph: fx.Graph, known: set[str]) -> dict[str, str]:
    """Map each raw ``nn_module_stack`` path to a model FQN (wrapper prefixes dropped)."""
    roots = {k.split(".", 1)[0] for k in known}
    out: dict[str, str] = {}
    for node in graph.nodes:
        for path, _cls in (node.meta.get("nn_module_stack") or {}).values():
            if path in out:
                continue
            fqn = clean_module_path(_ROOT.sub("", path))
            parts = fqn.split(".") if fqn else []
            while parts and parts[0] in _WRAPPERS and parts[0] not in roots:
                parts = parts[1:]
            out[path] = ".".join(parts)
    return out


_SOURCE_ATTR = re.compile(r"\._(?:modules|parameters|buffers)\[['\"]([^'\"]+)['\"]\]")


def frame_parameter_names(graph: fx.Graph, roots: set[str]) -> list[str]:
    """Names of the parameters a Dynamo graph lifted as inputs, relative to the frame's ``self``.

    ``L['self']._modules['attn']._modules['qkv']._parameters['weight']`` -> ``attn.qkv.weight``
    (wrapper prefixes such as ``module.`` dropped unless ``roots`` has them).  Graphs whose
    parameters are ``get_attr`` nodes (``torch.export``) give an empty list.

    Example:
        >>> frame_parameter_names(fx.Graph(), set())
        []
    """
    out: list[str] = []
    for node in graph.nodes:
        if node.op != "placeholder" or not _is_state(node):
            continue
        source = getattr(node.meta.get("grapharg"), "source", None)
        name = getattr(source, "name", None)
        text = name() if callable(name) else name
        if not isinstance(text, str) or "_parameters" not in text:
            continue
        parts = _SOURCE_ATTR.sub(r".\1", _ROOT.sub("", text)).strip(".").split(".")
        while parts and parts[0] in _WRAPPERS and parts[0] not in roots:
            parts = parts[1:]
        out.append(".".join(parts))
    return out


def _calls(graph: fx.Graph, known: set[str]) -> dict[str, list[list[fx.Node]]]:
    """For each module FQN, the nodes of each of its calls (in graph order).

    Placeholders and ``get_attr`` nodes are never members: a module's parameters are not
    part of what it computes.
    """
    paths = _module_paths(graph, known)
    groups: dict[tuple[str, str], list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        for key, (path, _cls) in (node.meta.get("nn_module_stack") or {}).items():
            fqn = paths.get(path, "")
            if fqn in known:
                groups.setdefault((fqn, key), []).append(node)
    out: dict[str, list[list[fx.Node]]] = {}
    for (fqn, _key), nodes in groups.items():
        out.setdefault(fqn, []).append(nodes)
    return out


def _uses_aten(graph: fx.Graph) -> bool:
    return any(isinstance(n.target, torch._ops.OpOverload) for n in graph.nodes if n.op == "call_function")


def _new_mul(graph: fx.Graph, src: fx.Node, factor: float, aten: bool) -> fx.Node:
    target = torch.ops.aten.mul.Tensor if aten else operator.mul
    node = graph.create_node("call_function", target, (src, float(factor)), name=f"fxparam_mul_{src.name}")
    node.meta["fxparam"] = float(factor)
    for key in ("stack_trace", "source_fn_stack"):
        if key in src.meta:
            node.meta[key] = src.meta[key]
    for key in ("val", "example_value"):
        val = src.meta.get(key)
        if isinstance(val, torch.Tensor):
            try:
                node.meta[key] = val * float(factor)  # a fake tensor: shape, dtype and device only
            except Exception:  # noqa: BLE001 - metadata is best effort; the graph is still right
                node.meta[key] = val
    if "tensor_meta" in src.meta:
        node.meta["tensor_meta"] = src.meta["tensor_meta"]
    return node


def _key_of(nodes: list[fx.Node], fqn: str, paths: dict[str, str]) -> str | None:
    for key, (path, _cls) in (nodes[0].meta.get("nn_module_stack") or {}).items():
        if paths.get(path) == fqn:
            return key
    return None


def _output_of(fqn: str, nodes: list[fx.Node]) -> fx.Node:
    """The one tensor that leaves one call of module ``fqn``."""
    members = set(nodes)
    leaving = [n for n in nodes if _is_tensor(n) and any(u not in members for u in n.users)]
    if len(leaving) != 1:
        names = [n.name for n in leaving]
        raise LoweringError(
            f"fxparam (graph rewrite): cannot scale the output of {fqn!r}: "
            + (f"{len(leaving)} tensors leave its nodes ({names[:4]}), so its output is not one tensor"
               if leaving else "no tensor computed inside it leaves it (it returns an input unchanged?)")
            + ". Use the eager lowering (fxparam.transform(model, ...), then torch.compile the model)."
        )
    return leaving[0]


def _input_of(fqn: str, nodes: list[fx.Node]) -> fx.Node:
    """The one activation (not a parameter, buffer or constant) that enters one call of ``fqn``."""
    members = set(nodes)
    inputs: list[fx.Node] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in members and a not in inputs and not _is_state(a) and _is_tensor(a):
                inputs.append(a)
    if len(inputs) != 1:
        raise LoweringError(
            f"fxparam (graph rewrite): cannot scale the input of {fqn!r}: "
            f"{len(inputs)} activations enter it ({[a.name for a in inputs][:4]}), and the graph does not "
            "say which one is its first argument. Use the eager lowering (fxparam.transform(model, ...))."
        )
    return inputs[0]


def _caller_stack(node: fx.Node, owner_key: str | None) -> dict[str, Any] | None:
    """``node``'s module stack cut above ``owner_key``: a multiplier belongs to the module's caller."""
    stack = node.meta.get("nn_module_stack")
    if stack is None:
        return None
    keys = list(stack)
    cut = keys.index(owner_key) if owner_key in stack else len(keys)
    return {k: stack[k] for k in keys[:cut]}


def _scale_output(graph: fx.Graph, nodes: list[fx.Node], out: fx.Node, factor: float, aten: bool,
                  owner_key: str | None) -> None:
    members = set(nodes)
    with graph.inserting_after(out):
        mul = _new_mul(graph, out, factor, aten)
    mul.meta["nn_module_stack"] = _caller_stack(out, owner_key)
    out.replace_all_uses_with(mul, delete_user_cb=lambda u: u not in members and u is not mul)


def _scale_input(graph: fx.Graph, nodes: list[fx.Node], x: fx.Node, factor: float, aten: bool,
                 owner_key: str | None) -> None:
    first = next(n for n in nodes if x in n.all_input_nodes)
    with graph.inserting_before(first):
        mul = _new_mul(graph, x, factor, aten)
    mul.meta["nn_module_stack"] = _caller_stack(first, owner_key)  # the pre-hook runs as the module is entered
    for n in nodes:
        if x in n.all_input_nodes:
            n.replace_input_with(x, mul)


def _sdpa_nodes(calls: list[list[fx.Node]]) -> list[fx.Node]:
    return [n for nodes in calls for n in nodes if n.op == "call_function" and n.target in _SDPA_TARGETS]


def check_supported(plan: Plan, lowering: str) -> None:
    """Refuse plan entries that ``lowering`` ("graph" or "compile") cannot express.

    SμPar masks are not graph entries: they live on the Parameters (zeroed entries and a
    gradient hook, see :func:`fxparam.lowering.eager.prepare_weights`).

    Raises:
        LoweringError: naming the entry and the eager lowering as the fix.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> check_supported(fxparam.plan(model, "completep+gns", base_width=32, base_depth=1), "graph")
        Traceback (most recent call last):
        fxparam.errors.LoweringError: the graph lowering does not support GNS norm swaps ...
    """
    fix = (
        "Use the eager lowering: fxparam.transform(model, ...) (then torch.compile(model) if you want it "
        "compiled; the eager hooks compile without graph breaks)."
    )
    if plan.norm_swaps:
        raise LoweringError(
            f"the {lowering} lowering does not support GNS norm swaps ({len(plan.norm_swaps)} norms, e.g. "
            f"{plan.norm_swaps[0]!r}): they replace modules, which a graph rewrite cannot do. {fix}"
        )
    for name, site in plan.attention.items():
        if site.kind != "sdpa":
            raise LoweringError(
                f"the {lowering} lowering cannot set the attention logit scale of {name!r}: it computes "
                "attention by hand (matmul, scale, softmax) and only the scale of "
                f"F.scaled_dot_product_attention is rewritten in a graph. {fix}"
            )


def apply_plan_to_graph(graph: fx.Graph, plan: Plan, *, partial: bool = False) -> GraphRewrite:
    """Rewrite ``graph`` in place so that it computes what the plan's forward changes say.

    Works on ATen graphs (``torch.export``) and on Dynamo's torch-IR graphs: modules are
    found through each node's ``nn_module_stack``.  Parameter values (init) are not this
    function's business; the optimizer rules live in the plan, keyed by FQN.

    Args:
        graph: the graph to rewrite (``graph.lint()`` is run; call ``recompile()`` on its
            GraphModule afterwards).
        plan: the plan; norm swaps and hand-written attention are refused (masks are
            not graph entries and are ignored here).
        partial: allow plan modules that do not appear in this graph (Dynamo hands a
            backend one graph per region between graph breaks); otherwise each must.

    Returns:
        A :class:`GraphRewrite` saying what was inserted where.

    Raises:
        LoweringError: a plan entry that cannot be expressed, or a module whose output /
            input is not a single tensor.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> plan = fxparam.plan(model, "completep", base_width=32, base_depth=1)
        >>> gm = torch.export.export(model, (torch.zeros(2, 8, dtype=torch.long),), strict=False).module()
        >>> rewrite = apply_plan_to_graph(gm.graph, plan)
        >>> rewrite.outputs["blocks.0.attn.proj"], rewrite.inputs["lm_head"]
        (1, 1)
        >>> _ = gm.recompile()
    """
    check_supported(plan, "graph" if not partial else "compile")
    known = plan.multiplied_modules() | set(plan.attention)
    calls = _calls(graph, known)
    paths = _module_paths(graph, known)
    aten = _uses_aten(graph)
    missing = sorted(k for k in known if k not in calls)
    if missing and not partial:
        raise LoweringError(
            f"fxparam (graph rewrite): the plan changes modules that have no nodes in the graph: {missing[:5]} "
            "(they did not run for these inputs, or their names differ). Plans are per model: rebuild it "
            "with fxparam.plan(model, ...) for this model."
        )
    # Find every site first (refusing ambiguous ones), then rewrite: an error leaves the graph as it was.
    sdpa: dict[str, list[fx.Node]] = {}
    for fqn in plan.attention:
        if fqn in calls:
            sdpa[fqn] = _sdpa_nodes(calls[fqn])
            if not sdpa[fqn]:
                raise LoweringError(
                    f"fxparam (graph rewrite): attention module {fqn!r} has no scaled_dot_product_attention "
                    "node in the graph, so its logit scale cannot be set. Use the eager lowering "
                    "(fxparam.transform(model, ...))."
                )
    sites: list[tuple[str, str, list[fx.Node], float]] = []
    for on, table in (("output", plan.output_multipliers), ("input", plan.input_multipliers)):
        for fqn, factor in table.items():
            for nodes in calls.get(fqn, []):
                _input_of(fqn, nodes) if on == "input" else _output_of(fqn, nodes)
                sites.append((on, fqn, nodes, factor))

    done = GraphRewrite()
    for fqn, nodes in sdpa.items():
        for n in nodes:
            n.update_kwarg("scale", float(plan.attention[fqn].scale))
        done.attention[fqn] = len(nodes)
    for on, fqn, nodes, factor in sites:  # sites are found again: an earlier rewrite may feed this one
        owner = _key_of(nodes, fqn, paths)
        if on == "input":
            _scale_input(graph, nodes, _input_of(fqn, nodes), factor, aten, owner)
            done.inputs[fqn] = done.inputs.get(fqn, 0) + 1
        else:
            _scale_output(graph, nodes, _output_of(fqn, nodes), factor, aten, owner)
            done.outputs[fqn] = done.outputs.get(fqn, 0) + 1
    graph.lint()
    return done


# --------------------------------------------------------------------------- the graph lowering


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}"


class _InputCheck:
    """Forward pre-hook of the lowered GraphModule: inputs and weights as at export time."""

    def __init__(self, specs: list[tuple[tuple[int, ...], torch.dtype, torch.device] | None], dynamic: bool,
                 param: tuple[str, torch.dtype, torch.device] | None) -> None:
        self.specs = specs
        self.dynamic = dynamic
        self.param = param

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        leaves = pytree.tree_leaves((args, kwargs))
        if len(leaves) != len(self.specs):
            raise LoweringError(
                f"fxparam graph lowering: the GraphModule was exported for {len(self.specs)} inputs and got "
                f"{len(leaves)}: call it with the same arguments as example_inputs (or lower again)"
            )
        for i, (leaf, spec) in enumerate(zip(leaves, self.specs, strict=True)):
            if spec is None or not isinstance(leaf, torch.Tensor):
                continue
            shape, dtype, device = spec
            bad_shape = tuple(leaf.shape) != shape if not self.dynamic else leaf.dim() != len(shape)
            if bad_shape or leaf.dtype != dtype or leaf.device != device:
                raise LoweringError(
                    f"fxparam graph lowering: input {i} is {_describe(leaf)}, but the GraphModule was exported "
                    f"for {shape} {dtype} on {device}. Its shapes are specialised and its dtype/device baked in: "
                    "pass example_inputs of the shape you will use, lower with dynamic=True "
                    "(fxparam.lowering.graph.lower_graph(model, plan, example_inputs=..., dynamic=True)), or use "
                    "the eager lowering."
                )
        if self.param is not None:
            name, dtype, device = self.param
            p = module.get_parameter(name)
            if p.dtype != dtype or p.device != device:
                raise LoweringError(
                    f"fxparam graph lowering: parameter {name} is now {p.dtype} on {p.device}, but the graph was "
                    f"exported with {dtype} on {device} (dtypes and devices are baked into the graph). Move "
                    "or cast the model first, then lower it again."
                )


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = _inspect.signature(model.forward).bind(*args, **kwargs)

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {d: torch.export.Dim.AUTO for d in range(value.dim())}
        return None

    return {name: pytree.tree_map(spec, value) for name, value in bound.arguments.items()}


def _first_param(model: nn.Module) -> tuple[str, torch.dtype, torch.device] | None:
    for name, p in model.named_parameters():
        return name, p.dtype, p.device
    return None


def lower_graph(
    model: nn.Module,
    plan: Plan,
    *,
    init: bool = True,
    example_inputs: Any = None,
    dynamic: bool = False,
) -> fx.GraphModule:
    """Export ``model`` and return a GraphModule with the plan's multipliers as explicit nodes.

    The GraphModule shares the model's parameters (same ``Parameter`` objects, same FQNs),
    so ``fxparam.optimizer(gm, ...)`` and ``gm.state_dict()`` work as on the model.  The
    model gets no forward hooks.  The plan's weight side is applied as in the eager
    lowering: with ``init=True`` the shared weights are re-initialised, and SμPar masks are
    installed on the GraphModule's submodules.

    Args:
        model: the model (not already transformed).
        plan: from ``fxparam.plan(model, config)``.
        init: re-initialise the (shared) weights per the plan; False before loading a
            checkpoint.
        example_inputs: real inputs to export with (a tensor, tuple, dict of keyword
            arguments or ``(args, kwargs)``); optional for models that describe their own.
            Their shapes are the only shapes the GraphModule accepts unless ``dynamic``.
        dynamic: export every input dimension as dynamic (``torch.export.Dim.AUTO``).

    Returns:
        A ``torch.fx.GraphModule`` (``ep.module()``) carrying the plan (``fxparam.plan_of(gm)``).

    Raises:
        LoweringError: norm swaps or hand-written attention in the plan, a plan for
            another model, or a module whose output/input is not one tensor.
        CaptureError: the model cannot be exported.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> idx = torch.zeros(2, 16, dtype=torch.long)
        >>> gm = fxparam.transform(model, "mup", base_width=32, lowering="graph", example_inputs=idx)
        >>> [(name, factor) for name, factor in multiplier_nodes(gm)]
        [('fxparam_mul_layer_norm_4', 0.5)]
        >>> gm(idx).shape
        torch.Size([2, 16, 256])
        >>> opt = fxparam.optimizer(gm, torch.optim.AdamW, lr=1e-2)
    """
    from fxparam.lowering.eager import _validate, prepare_weights

    check_supported(plan, "graph")
    _validate(model, plan)
    if example_inputs is None:
        args, kwargs = default_example_inputs(model)
    else:
        args, kwargs = _split_inputs(example_inputs)
    device = next((p.device for p in model.parameters()), None)
    if device is not None:  # default inputs are built on the CPU
        args, kwargs = pytree.tree_map_only(
            torch.Tensor, lambda t: t.to(device) if t.device != device else t, (args, kwargs)
        )
    try:
        ep = torch.export.export(
            model, args, kwargs, strict=False,
            dynamic_shapes=_dynamic_shapes(model, args, kwargs) if dynamic else None,
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes a CaptureError
        raise CaptureError(
            f"fxparam graph lowering could not export {type(model).__name__}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}. Check example_inputs, or use "
            "the eager lowering (fxparam.transform(model, ...))."
        ) from exc
    gm = ep.module()
    apply_plan_to_graph(gm.graph, plan)
    gm.recompile()
    # The weight side, on the GraphModule's submodules (they hold the model's Parameters): the
    # eager lowering's masks and re-init, in the same order, so the same seed gives the same weights.
    prepare_weights(gm, plan, init=init)

    leaves = pytree.tree_leaves((args, kwargs))
    specs = [(tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else None for t in leaves]
    attacher = _Attach(_InputCheck(specs, dynamic, _first_param(gm)), plan)
    attacher(gm)
    gm._register_deepcopy_hook(attacher)  # GraphModule.__deepcopy__ drops forward hooks and attributes
    return gm


class _MaskGuards:
    """Forward pre-hook of a masked GraphModule: run each submodule's SμPar mask guard.

    The GraphModule never calls its submodules, so their guards (re-hook the gradient of a
    copied Parameter, re-zero masked entries after a foreign write) run from here.
    """

    def __init__(self, guards: list[tuple[nn.Module, Any]]) -> None:
        self.guards = guards

    def __call__(self, module: nn.Module, args: tuple) -> None:
        for owner, guard in self.guards:
            guard(owner, args)


class _Attach:
    """Give a lowered GraphModule (or its deepcopy) its input check and its plan."""

    def __init__(self, check: _InputCheck, plan: Plan) -> None:
        self.check = check
        self.plan = plan

    def __call__(self, gm: fx.GraphModule) -> None:
        handle = gm.register_forward_pre_hook(self.check, with_kwargs=True)
        hooks = cast("OrderedDict[int, Any]", gm._forward_pre_hooks)  # an OrderedDict in nn.Module
        hooks.move_to_end(handle.id, last=False)  # before export's own guards
        if self.plan.masks:
            from fxparam.lowering.masks import _guards

            gm.register_forward_pre_hook(_MaskGuards(_guards(gm)))
        attach(gm, self.plan)


def multiplier_nodes(gm: fx.GraphModule) -> Iterable[tuple[str, float]]:
    """``(node name, factor)`` of every multiplier node fxparam inserted (for reading what changed).

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> gm = fxparam.transform(model, "completep", base_width=32, base_depth=1, lowering="graph")
        >>> sorted(factor for _name, factor in multiplier_nodes(gm))
        [0.5, 0.5, 0.5, 0.5, 0.5]
    """
    for n in gm.graph.nodes:
        if "fxparam" in n.meta:
            yield n.name, n.meta["fxparam"]

