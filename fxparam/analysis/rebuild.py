"""A second width: rebuild the architecture wider (on meta) to cross-check width dims, and
find constants in the forward that change with width (issue 13, case 10).

muP assumes every coordinate of the embedding output is Theta(1) at any width (Tensor
Programs V, Table 3: input weights init sigma, multiplier alpha_in).  A model that multiplies
its embedding output by sqrt(d) inside ``forward`` (Gemma's ``normalizer``, the original
Transformer's ``* sqrt(d_model)``) breaks that: the coordinates grow like m_d^0.5.  The plan
divides such a constant out with a multiplier m_d^-k on the module whose output it scales
(so the model equals itself at the base width); a width-dependent constant anywhere else is a
warning naming the module.

A constant ``c`` is width-dependent with exponent ``k`` when a second build at width ``w2``
shows ``c2 / c1 = (w2 / w1)^k``; without a second build, ``c = width^k`` for k in
{1/2, 1, -1/2, -1} is taken as the same evidence (and said so in the note).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from fxparam.analysis.graph import ModelGraph

#: Config fields that carry width in Hugging Face configs (heads grow, head dim fixed).
HF_WIDTH_FIELDS = ("hidden_size", "intermediate_size", "moe_intermediate_size", "n_embd", "n_inner", "ffn_dim",
                   "word_embed_proj_dim", "ffn_hidden_size", "d_model", "d_ff", "num_attention_heads", "n_head",
                   "num_heads", "num_key_value_heads", "shared_expert_intermediate_size")
_SCALE_OPS = {"aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar"}
_POWERS = (0.5, 1.0, -0.5, -1.0)
_PASS = {"aten.to.dtype", "aten._to_copy.default", "aten.to.dtype_layout", "aten.type_as.default",
         "aten.clone.default", "aten.alias.default", "aten.view.default", "aten.reshape.default",
         "aten.dropout.default", "aten.contiguous.default"}

Rebuild = Callable[[int], nn.Module]


def power_of(value: float, base: float, powers: tuple[float, ...] = _POWERS) -> float | None:
    """The k in ``powers`` with ``value == base**k`` (relative tolerance 1e-4), else None.

    The one-capture evidence that a constant follows a size (width, m_d, depth): ``8 = 64^0.5``.
    """
    return next((k for k in powers if math.isclose(value, base**k, rel_tol=1e-4)), None)


class WidthConstantWarning(UserWarning):
    """A constant in the forward changes with width and fxparam cannot divide it out."""


def wider(model: nn.Module, width: int, factor: int = 2, rebuild: Rebuild | bool | None = True) -> nn.Module | None:
    """The same architecture at ``factor * width`` on the meta device, or None if unknown.

    Args:
        rebuild: a user factory ``make(width) -> nn.Module`` (called under the meta device),
            or True to rebuild the reference GPT from its config / a Hugging Face model from
            its config (width fields scaled, heads grow, head dim fixed).
    """
    new_width = width * factor
    with torch.device("meta"):
        if callable(rebuild):
            return rebuild(new_width)
        if not rebuild:
            return None
        cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
        from fxparam.models.gpt import GPT, GPTConfig

        if isinstance(model, GPT) and isinstance(cfg, GPTConfig):
            return GPT(dataclasses.replace(cfg, width=new_width))
        if cfg is not None and hasattr(cfg, "to_dict") and hasattr(type(model), "config_class"):
            data = cfg.to_dict()
            changed = False
            for f in HF_WIDTH_FIELDS:
                value = data.get(f)
                if isinstance(value, int) and value > 1 and not (f == "num_key_value_heads" and data.get("multi_query")):
                    data[f] = value * factor
                    changed = True
            if not changed:
                return None
            new_cfg = type(cfg).from_dict(data)
            new_cfg._attn_implementation = getattr(cfg, "_attn_implementation", None) or "sdpa"
            return type(model)(new_cfg)
    return None


def changed_axes(model: nn.Module, wide: nn.Module) -> dict[str, list[int]]:
    """Per parameter FQN, the axes whose size differs in the wider build."""
    shapes = {n: tuple(p.shape) for n, p in wide.named_parameters(remove_duplicate=False)}
    out: dict[str, list[int]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        s = shapes.get(n)
        if s is not None and len(s) == p.dim():
            out[n] = [i for i, (a, b) in enumerate(zip(p.shape, s, strict=True)) if a != b]
    return out


@dataclasses.dataclass
class FoundConstant:
    node: str
    module: str  # owner of the scaling op
    value: float
    exponent: float | None  # c ~ width^exponent
    scales: str | None  # module where it is divided out (its output, or its input when on == "input")
    evidence: str
    on: str = "output"
    confirmed: bool = False  # seen changing in a second build (else: equal to a power of the width)


def scalar_constants(mg: ModelGraph, model: nn.Module) -> dict[str, tuple[float, str]]:
    """Scaling ops with a scalar constant: node -> (value, the scaled data operand)."""
    out: dict[str, tuple[float, str]] = {}
    buffers = dict(model.named_buffers(remove_duplicate=False))
    for name, node in mg.nodes.items():
        if str(node.target) not in _SCALE_OPS or len(node.args) != 2:
            continue
        a, b = node.args
        if not isinstance(a, torch.fx.Node):
            continue
        value = None
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            value = float(b)
        elif isinstance(b, torch.fx.Node):
            src = b
            while str(src.target) in _PASS and src.args and isinstance(src.args[0], torch.fx.Node):
                src = src.args[0]
            fqn = mg.capture.node_buffer.get(src.name)
            buf = buffers.get(fqn) if fqn else None
            if buf is not None and buf.numel() == 1 and buf.device.type != "meta":
                value = float(buf.reshape(()).item())
        if value is None or value == 0.0:
            continue
        if str(node.target).startswith("aten.div"):
            value = 1.0 / value
        out[name] = (value, a.name)
    return out


def width_constants(
    mg: ModelGraph, model: nn.Module, width: int | None, embedding_modules: set[str],
    second: tuple[ModelGraph, nn.Module, int] | None = None, exclude: set[str] = frozenset(),
    carries_width: Callable[[str], bool] | None = None,
) -> list[FoundConstant]:
    """Constants in the forward that change with width (see module docstring).

    ``exclude``: scaling nodes that are attention logit scales (the attention rule owns them).
    Constants applied to a reduction over the width (``sum / d``, ``norm * d**-0.5``) are means
    and RMS values, invariant by construction: never reported.  ``carries_width(node)``: whether a
    node is computed from the model's inputs (through its width activations); a constant scaling
    a tensor that is not (T5's relative-position buckets, ``arange(T) / 8``) is no muP coordinate
    and is not reported.
    """
    if not width:
        return []
    found: list[FoundConstant] = []
    mine = scalar_constants(mg, model)
    theirs = scalar_constants(second[0], second[1]) if second is not None else {}
    for node, (value, operand) in mine.items():
        if abs(value - 1.0) < 1e-12 or node in exclude or _is_reduction(mg, operand):
            continue
        if carries_width is not None and not carries_width(operand):
            continue
        exponent = None
        evidence = ""
        confirmed = second is not None and node in theirs
        if confirmed:
            v2 = theirs[node][0]
            if v2 != value and v2 * value > 0:
                exponent = math.log(v2 / value) / math.log(second[2] / width)
                evidence = f"{value:.4g} at width {width}, {v2:.4g} at width {second[2]}"
        else:
            exponent = power_of(value, width)
            if exponent is not None:
                why = "no second build to confirm; pass rebuild=" if second is None else "a buffer: no value on meta"
                evidence = f"{value:.4g} = {width}^{exponent:g}; {why}"
        if exponent is None or abs(exponent) < 1e-6:
            continue
        # unconfirmed, only an embedding's own output is corrected (case 10); elsewhere a warning
        scales, on = _divided_out_at(mg, node, operand, embedding_modules, anywhere=confirmed)
        found.append(FoundConstant(node=node, module=mg.owner.get(node, ""), value=value,
                                   exponent=round(exponent, 4), scales=scales, evidence=evidence, on=on,
                                   confirmed=confirmed))
    return found


def module_constants(
    mg: ModelGraph, model: nn.Module, embedding_modules: set[str], exclude: set[str], skip: set[str],
) -> list[FoundConstant]:
    """Without a second build: every other scalar constant that alone scales a module's input or output
    (``logits * (d_base / d)``, mup's ``output_mult / width_mult``). The width passes compare them with
    m_d^k: a match is muP-style code already in the forward, which muP would count twice."""
    found: list[FoundConstant] = []
    for node, (value, operand) in scalar_constants(mg, model).items():
        if abs(value - 1.0) < 1e-12 or node in exclude or node in skip or _is_reduction(mg, operand):
            continue
        scales, on = _divided_out_at(mg, node, operand, embedding_modules, anywhere=True)
        if scales is not None:
            found.append(FoundConstant(node=node, module=mg.owner.get(node, ""), value=value, exponent=0.0,
                                       scales=scales, evidence="no second build", on=on))
    return found


_REDUCTIONS = {"aten.sum.dim_IntList", "aten.sum.default", "aten.linalg_vector_norm.default",
               "aten.norm.ScalarOpt_dim", "aten.norm.Scalar"}


def _divided_out_at(
    mg: ModelGraph, op: str, operand: str, embedding_modules: set[str], *, anywhere: bool
) -> tuple[str | None, str]:
    """Where a multiplier can divide the constant of ``op`` out exactly: ``(module, "output" | "input")``.

    The embedding whose output it alone scales; with ``anywhere``, then the leaf module whose input
    is its result alone, then the leaf module whose output it alone scales.  ``(None, "output")``: nowhere.
    """
    scales = _embedding_scaled(mg, operand, op, embedding_modules)
    if scales is not None or not anywhere:
        return scales, "output"
    scales = _consumer_module(mg, op)
    if scales is not None:
        return scales, "input"
    return _producer_module(mg, operand, op), "output"


def _behind_views(mg: ModelGraph, n: str) -> str | None:
    """The node whose value ``n`` is, through views and casts; None where one has several inputs."""
    while mg.target(n) in _PASS:
        args = mg.tensor_args(n)
        if len(args) != 1:
            return None
        n = args[0]
    return n


def _is_reduction(mg: ModelGraph, operand: str) -> bool:
    cur = _behind_views(mg, operand)
    return cur is not None and mg.target(cur) in _REDUCTIONS


def _leaf_called_once(mg: ModelGraph, fqn: str) -> bool:
    """A module with no children whose every parameter is read by exactly one op (one call)."""
    mod = mg.capture.modules.get(fqn)
    if not fqn or mod is None or any(True for _ in mod.children()):
        return False
    pnodes = [p for p, name in mg.param_of.items() if name.rsplit(".", 1)[0] == fqn and p in mg.g]
    return bool(pnodes) and all(len(list(mg.g.successors(p))) == 1 for p in pnodes)


def _consumer_module(mg: ModelGraph, op: str) -> str | None:
    """The leaf module whose only input is the result of ``op`` (through views): an input multiplier
    there replaces the constant c by c * m_d^-k exactly, whatever the module computes."""
    frontier, consumers = [op], set()
    while frontier:
        n = frontier.pop()
        for nxt in mg.g.successors(n):
            owner = mg.owner.get(nxt, "")
            if owner != mg.owner.get(op, "") and owner:
                consumers.add(owner)
            elif mg.target(nxt) in _PASS:
                frontier.append(nxt)
            else:
                return None  # used outside a module too
    if len(consumers) != 1:
        return None
    (fqn,) = consumers
    return fqn if _leaf_called_once(mg, fqn) else None


def _producer_module(mg: ModelGraph, operand: str, op: str) -> str | None:
    """The leaf module (called once) whose output is ``operand`` and feeds nothing but ``op``."""
    cur = _behind_views(mg, operand)
    if cur is None:
        return None
    fqn = mg.owner.get(cur, "")
    if not _leaf_called_once(mg, fqn) or fqn == mg.owner.get(op, ""):
        return None
    return fqn if _feeds_only(mg, cur, op) else None


def _embedding_scaled(mg: ModelGraph, operand: str, op: str, embedding_modules: set[str]) -> str | None:
    """The embedding module whose output is ``operand`` and feeds only ``op``, else None."""
    cur = _behind_views(mg, operand)
    if cur is None:
        return None
    module = mg.owner.get(cur, "")
    if module not in embedding_modules:
        return None
    return module if _feeds_only(mg, cur, op) else None


def _feeds_only(mg: ModelGraph, cur: str, op: str) -> bool:
    """``cur``'s value reaches nothing but ``op`` (through views, casts and asserts)."""
    stack, seen = [cur], {cur}
    while stack:
        n = stack.pop()
        for nxt in mg.g.successors(n):
            if nxt == op or nxt in seen:
                continue
            if mg.target(nxt) in _PASS or mg.target(nxt).startswith("aten._assert"):
                seen.add(nxt)
                stack.append(nxt)
                continue
            return False
    return True


def warn_constants(found: list[FoundConstant]) -> list[str]:
    notes = []
    for c in found:
        where = f"the {'input' if c.on == 'input' else 'output'} of {c.scales}"
        if c.scales:
            notes.append(f"width-dependent constant x{c.value:.4g} on {where} ({c.evidence}): "
                         f"muP divides it out with a multiplier m_d^{-c.exponent:g} on {where}")
            continue
        if c.confirmed:
            msg = (f"width-dependent constant x{c.value:.4g} in {c.module or '<root>'} ({c.evidence}): it grows like "
                   f"m_d^{c.exponent:g} and fxparam does not correct it (no module that it alone feeds or is fed by); "
                   "move it into a module or remove it from forward (muP assumes width-independent forward constants)")
        else:
            msg = (f"constant x{c.value:.4g} in {c.module or '<root>'} ({c.evidence}) equals a power of the width: if it "
                   f"changes with width (grows like m_d^{c.exponent:g}), muP's multipliers are off by that factor. Pass "
                   "rebuild=make(width) (rebuild=True for the reference GPT / HF models): a second build confirms it "
                   "and fxparam divides it out where it can; if it is fixed, ignore this warning")
        notes.append(msg)
        warnings.warn(msg, WidthConstantWarning, stacklevel=4)
    return notes
