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
    scales: str | None  # module whose output (only) this constant scales, when it is an embedding
    evidence: str


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
    second: tuple[ModelGraph, nn.Module, int] | None = None,
) -> list[FoundConstant]:
    """Constants in the forward that change with width (see module docstring)."""
    if not width:
        return []
    found: list[FoundConstant] = []
    mine = scalar_constants(mg, model)
    theirs = scalar_constants(second[0], second[1]) if second is not None else {}
    for node, (value, operand) in mine.items():
        if abs(value - 1.0) < 1e-12:
            continue
        exponent = None
        evidence = ""
        if second is not None and node in theirs:
            v2 = theirs[node][0]
            if v2 != value and v2 * value > 0:
                exponent = math.log(v2 / value) / math.log(second[2] / width)
                evidence = f"{value:.4g} at width {width}, {v2:.4g} at width {second[2]}"
        elif second is None or node not in theirs:
            for k in _POWERS:
                if math.isclose(value, width**k, rel_tol=1e-4):
                    exponent = k
                    why = "no second build to confirm; pass rebuild=" if second is None else "a buffer: no value on meta"
                    evidence = f"{value:.4g} = {width}^{k:g}; {why}"
                    break
        if exponent is None or abs(exponent) < 1e-6:
            continue
        scales = _embedding_scaled(mg, operand, node, embedding_modules)
        if scales is None and (second is None or node not in theirs):
            continue  # away from an embedding, only a second build is evidence enough (no false alarms)
        found.append(FoundConstant(node=node, module=mg.owner.get(node, ""), value=value,
                                   exponent=round(exponent, 4), scales=scales, evidence=evidence))
    return found


def _embedding_scaled(mg: ModelGraph, operand: str, op: str, embedding_modules: set[str]) -> str | None:
    """The embedding module whose output is ``operand`` and feeds only ``op``, else None."""
    cur = operand
    while mg.target(cur) in _PASS:
        args = [a for a in mg.tensor_args(cur)]
        if len(args) != 1:
            return None
        cur = args[0]
    module = mg.owner.get(cur, "")
    if module not in embedding_modules:
        return None
    # the embedding's value must reach nothing but this scaling op
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
            return None
    return module


def warn_constants(found: list[FoundConstant]) -> list[str]:
    notes = []
    for c in found:
        if c.scales:
            notes.append(f"width-dependent constant x{c.value:.4g} on the output of {c.scales} ({c.evidence}): "
                         f"muP divides it out with a multiplier m_d^{-c.exponent:g} on {c.scales}")
        else:
            msg = (f"width-dependent constant x{c.value:.4g} in {c.module or '<root>'} ({c.evidence}): it grows like "
                   f"m_d^{c.exponent:g} and fxparam does not correct it; move it into a module or remove it from "
                   "forward (muP assumes width-independent forward constants)")
            notes.append(msg)
            warnings.warn(msg, WidthConstantWarning, stacklevel=4)
    return notes
