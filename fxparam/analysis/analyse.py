"""capture -> graph -> facts: the pure analysis behind ``fxparam.inspect``."""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn as nn

from fxparam.analysis.dims import DimAnalysis
from fxparam.analysis.facts import Analysis, AttentionSite, NormSite, ParamInfo, ResidualSite, WidthConstant
from fxparam.analysis.graph import build_graph
from fxparam.analysis.rebuild import (
    Rebuild,
    changed_axes,
    module_constants,
    warn_constants,
    wider,
    width_constants,
)
from fxparam.analysis.roles import check_overrides, override, param_role, warn_unclassified
from fxparam.analysis.structure import StructureFinder
from fxparam.capture import Capture, capture


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Groups of FQNs that name one shared Parameter (by identity), in registration order."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _module_of(fqn: str) -> str:
    return fqn.rpartition(".")[0]


def analyse(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    cap: Capture | None = None,
    roles: dict[str, str] | None = None,
    changed: dict[str, list[int]] | None = None,
    rebuild: Rebuild | bool | None = None,
) -> Analysis:
    """Analyse ``model`` without modifying it (see ``fxparam.inspect``).

    Args:
        roles: user overrides ``{"fqn" or "re:pattern": "embedding"|"hidden"|"readout"|"vector"|"frozen"}``.
        changed: ``{skeleton param FQN: axes that grow}`` from a capture at a second width
            (``fxparam.analysis.rebuild``); cross-checks the dimension analysis.
        rebuild: a factory ``make(width) -> nn.Module``, or True for the reference GPT / an HF
            model rebuilt from its config: a second build at twice the width (meta) cross-checks
            which axes grow and finds forward constants that change with width.
    """
    check_overrides([n for n, _ in model.named_parameters(remove_duplicate=False)], roles)
    cap = cap or capture(model, example_inputs)
    mg = build_graph(cap)
    sf = StructureFinder(mg)
    dims = DimAnalysis(mg, [s.add for s in sf.sites], changed=changed)
    width = dims.width if dims.width is not None else sf.width()
    second, rebuild_notes = None, []
    if rebuild and width:
        dims, second, rebuild_notes = _second_width(model, example_inputs, cap, mg, sf, dims, width, rebuild)

    # --- per skeleton parameter: roles from width dims (fxparam.analysis.roles) ---------
    skel_info: dict[str, dict[str, Any]] = {}  # skeleton FQN of the use's alias -> fields
    for pnode, fqn in mg.param_of.items():
        uses = dims.contractions.get(pnode, [])
        aliases = _aliases(cap, fqn)
        # Each alias gets the role of the uses its own module performs (tied weights:
        # the embedding alias gets the embedding rules, the lm_head alias the readout).
        for alias in aliases:
            own = [u for u in uses if mg.owner.get(u.op, "") == _module_of(alias)]
            if not own:  # e.g. T5's ``shared``: the uses no other alias's module performs
                others = {_module_of(x) for x in aliases if x != alias}
                own = [u for u in uses if mg.owner.get(u.op, "") not in others]
                own = own or [u for u in uses if u.kind == "embedding"]  # the table's owner: embedding rules
            if len(aliases) == 1 or not own:
                own = uses
            skel_info[alias] = param_role(mg, sf, dims, pnode, alias, own)
        tied_primary = _primary(aliases, skel_info)
        for alias in aliases:
            if alias != tied_primary:
                skel_info[alias]["tied_to"] = tied_primary

    # --- expand to the model's real FQNs --------------------------------------------
    groups = tied_groups(model)
    params: dict[str, ParamInfo] = {}
    notes: list[str] = list(rebuild_notes)
    warned: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        skel = cap.skeleton_name(name)
        info = dict(skel_info.get(skel) or _unused(list(p.shape)))
        if info.get("tied_to"):
            info["tied_to"] = _real_like(info["tied_to"], name, skel)
        if info.get("multiplier_at"):
            info["multiplier_at"] = _real_like(info["multiplier_at"], name, skel)
        info["module"] = _module_of(name)
        block = sf.block_of(_prefixes(skel))
        info["block"] = _real_like(block, name, skel) if block else None
        info = override(name, info, roles)
        warning = info.pop("warning", None)
        if warning and not info.get("tied_to") and skel not in warned:
            warned.add(skel)
            notes.append(warning.replace(skel, name))
        params[name] = ParamInfo(**info)
    if second is None and width:
        notes += _factorised_readouts(params, width)
    if width and not sf.sites:
        notes += _width_units(params, width)
    warn_unclassified(notes)
    emb_modules = {_module_of(a) for a, i in skel_info.items() if i["role"] == "embedding"}
    skeleton_sites = sf.attention_sites()  # first: its scaling ops are the attention rule's, not width constants
    found = width_constants(mg, model, width, emb_modules, second, exclude=sf.attention_scale_nodes,
                            carries_width=lambda node: node in sf.data)
    notes += warn_constants(found)
    others = [] if second is not None else module_constants(
        mg, model, emb_modules, sf.attention_scale_nodes, {c.node for c in found})
    forward_constants = [WidthConstant(module=o, value=c.value, exponent=0.0, scales=r, on=c.on, evidence=c.evidence)
                         for c in others for o, r in zip([c.module] * len(cap.real_names(c.scales or "")),
                                                         cap.real_names(c.scales or ""), strict=True)]
    constants = []
    for c in found:  # the last captured block stands for the blocks past it: one constant per real module
        reals = cap.real_names(c.scales) if c.scales else [None]
        owners = cap.real_names(c.module) if c.module else [c.module]
        owners = owners if len(owners) == len(reals) else [c.module] * len(reals)
        constants += [WidthConstant(module=o, value=c.value, exponent=c.exponent or 0.0, scales=r, on=c.on,
                                    evidence=c.evidence) for o, r in zip(owners, reals, strict=True)]

    residuals: list[ResidualSite] = []
    blocks: list[str] = []
    for site in sf.sites:
        for real_block in cap.real_names(site.block):
            ren = lambda f, rb=real_block, sb=site.block: _rename(f, sb, rb)  # noqa: E731
            residuals.append(
                ResidualSite(
                    block=real_block,
                    branch=ren(site.branches[0]),
                    branches=[ren(b) for b in site.branches],
                    output_modules=[r for m in site.output_modules for r in _real_outputs(cap, m, site.block, real_block)],
                    stream=site.stream,
                    application=site.application,
                    unscalable=site.unscalable,
                    own_factor=site.own_factor * _buffer_product(model, [(ren(b), e) for b, e in site.own_buffers]),
                )
            )
    for r in sorted(residuals, key=lambda r: _block_key(r.block)):
        if r.block not in blocks:
            blocks.append(r.block)
    residuals.sort(key=lambda r: (r.stream, _block_key(r.block), r.application))
    # depth = residual blocks applied, per stream (a shared block applied n times counts n)
    applied: dict[int, set[tuple[str, int]]] = {}
    for r in residuals:
        applied.setdefault(r.stream, set()).add((r.block, r.application))
    stream_depths = [len(applied[s]) for s in sorted(applied)]

    attention: list[AttentionSite] = []
    skeleton_scale = {a.module: a.scale for a in skeleton_sites}
    wide_scales: dict[str, float | None] | None = None
    for a, node in zip(skeleton_sites, sf.attention_nodes, strict=True):
        if second is not None:  # the same query node in the build at twice the width: does the head dim grow?
            q, axis = sf.attention_query.get(node, (None, -1))
            wide_shape = second[0].shape(q) if q is not None and q in second[0].nodes else None
            if wide_shape and -len(wide_shape) <= axis < len(wide_shape):
                update: dict[str, Any] = {"wide_head_dim": int(wide_shape[axis])}
                if update["wide_head_dim"] != a.head_dim:  # and its scale there (already 1/d_head, or SP's?)
                    if wide_scales is None:
                        sf2 = StructureFinder(second[0])
                        wide_scales = {n: s.scale for s, n in zip(sf2.attention_sites(), sf2.attention_nodes,
                                                                   strict=True)}
                    update["wide_scale"] = wide_scales.get(node)
                a = a.model_copy(update=update)
        # capture keeps 2 blocks: a scale held in no attribute that differs between them (a per-layer
        # constant) is unknown for the blocks that were not captured -> None (the passes warn)
        varies = a.scale_attr is None and skeleton_scale.get(_previous_block(cap, a.module), a.scale) != a.scale
        for real in cap.real_names(a.module):
            changes: dict[str, Any] = {"module": real}
            if varies and real != a.module:
                changes["scale"] = None
            if a.scale_attr_module is not None:
                changes["scale_attr_module"] = _rename(a.scale_attr_module, a.module, real)
                # per layer: the real module's own value (blocks past the captured ones may differ)
                value = getattr(_submodule(model, changes["scale_attr_module"]), a.scale_attr or "", None)
                if isinstance(value, float):
                    changes["scale"] = value
            attention.append(a.model_copy(update=changes))
    norms: list[NormSite] = []
    for n in sf.norm_sites():
        for real in cap.real_names(n.module):
            norms.append(n.model_copy(update={"module": real, "params": [_rename(p, n.module, real) for p in n.params]}))
    attention.sort(key=lambda a: _block_key(a.module))
    for note in sf.notes:
        notes.append(note)
        warnings.warn(f"fxparam: {note}", stacklevel=3)
    unknown = [a.module for a in attention if a.scale is None]
    if unknown:
        notes.append(
            f"attention logit scale not found in {len(unknown)} module(s), e.g. {unknown[0]!r} (softmax over q.k "
            "through a tensor factor or a nonlinearity): muP cannot apply its attention rule there; pass "
            "attention='sp' to accept that, or keep the scale in a float `scaling` attribute the forward uses"
        )
    norms.sort(key=lambda n: _block_key(n.module))

    return Analysis(
        model_class=cap.model_class,
        width=width,
        depth=max(stream_depths, default=0),
        blocks=blocks,
        stream_depths=stream_depths,
        residuals=residuals,
        params=params,
        attention=attention,
        tied=groups,
        norms=norms,
        capture_method=cap.method,
        notes=notes,
        width_constants=constants,
        forward_constants=forward_constants,
        capture_seconds=round(cap.seconds, 4),
    )


# ------------------------------------------------------------------------------ helpers


def _previous_block(cap: Capture, fqn: str) -> str:
    """The same module in the block before, for a module in the last captured block of a shortened container."""
    for prefix, (kept, _total) in cap.reduced.items():
        last = f"{prefix}.{kept - 1}"
        if kept >= 2 and (fqn == last or fqn.startswith(last + ".")):
            return f"{prefix}.{kept - 2}" + fqn[len(last) :]
    return fqn


def _factorised_readouts(params: dict[str, ParamInfo], width: int) -> list[str]:
    """Readouts whose fan-in is not the width, with no second build to tell what that dim is: say so.

    ``Linear(d, 16) -> Linear(16, vocab)`` (a factorised head) and an MLP feeding a readout look the
    same on one capture: the 16 reads as a width-derived hidden dim, so the first layer gets hidden
    rules. Only a second build (or the user) can tell a fixed bottleneck from a width dim.
    """
    notes = []
    for name, info in params.items():
        if info.role != "readout" or info.tied_to or info.fan_in in (None, width):
            continue
        if info.reason.startswith("override"):
            continue
        notes.append(
            f"readout {name!r} reads a {info.fan_in}-dim input, not the width {width}: if that dim is fixed (a "
            "factorised head), the layer producing it is a readout, not hidden. Pass rebuild=make(width) (or "
            "rebuild=True for the reference GPT / HF models) so a second build tells, or roles={...: 'readout'}"
        )
    return notes


def _width_units(params: dict[str, ParamInfo], width: int) -> list[str]:
    """No residual stream: the width is the most common width-dim size, and base_width must be given in
    those units (a CNN's flatten makes the classifier's fan-in channels x H x W, not the channels). When the
    width dims have other sizes too, say which size m_d = width / base_width reads."""
    sizes: dict[int, str] = {}
    for name, p in params.items():
        if p.role in ("hidden", "readout", "embedding"):
            for axis in p.width_dims:
                if axis < len(p.shape) and p.shape[axis] != width:
                    sizes.setdefault(p.shape[axis], name)
    if not sizes:
        return []
    example = ", ".join(f"{s} ({n})" for s, n in sorted(sizes.items())[:3])
    same = next((n for n, p in params.items() if width in [p.shape[a] for a in p.width_dims if a < len(p.shape)]),
                "?")
    return [f"no residual stream: the width is read as {width} (a width dim of {same}); other width dims have "
            f"sizes {example}. m_d = width / base_width, so give base_width as the size of that same dim in the "
            f"base model (e.g. base_width={width // 2} for a base model half as wide)"]


def _second_width(model, example_inputs, cap, mg, sf, dims, width, rebuild):
    """Build the model at twice the width (meta), seed the axes that grow, capture it for constants."""
    wide = wider(model, width, 2, rebuild)
    if wide is None:
        return dims, None, [f"rebuild: {type(model).__name__} cannot be rebuilt at a second width "
                            "(pass rebuild=make(width)); width dims from the dimension analysis only"]
    grows = changed_axes(model, wide)
    notes = []
    skel_changed: dict[str, list[int]] = {}
    for name, axes in grows.items():
        skel = cap.skeleton_name(name)
        skel_changed.setdefault(skel, axes)
    for pnode, fqn in mg.param_of.items():
        axes = skel_changed.get(fqn)
        used = pnode in mg.g and any(True for _ in mg.g.successors(pnode))
        if used and axes is not None and len(mg.shape(pnode) or ()) >= 2 and dims.width_axes(pnode) != axes:
            notes.append(f"rebuild: {fqn}: the dimension analysis finds width axes {dims.width_axes(pnode)}, "
                         f"the build at width {2 * width} grows axes {axes}; using the build's")
    dims = DimAnalysis(mg, [s.add for s in sf.sites], changed=skel_changed)
    second = None
    try:
        cap2 = capture(wide, example_inputs)
        second = (build_graph(cap2), wide, 2 * width)
    except Exception as exc:  # noqa: BLE001 - the second capture is a cross-check, never required
        notes.append(f"rebuild: the build at width {2 * width} could not be captured ({type(exc).__name__}); "
                     "forward constants checked against powers of the width only")
    return dims, second, notes


def _submodule(model: nn.Module, fqn: str) -> nn.Module | None:
    try:
        return model.get_submodule(fqn)
    except AttributeError:
        return None


def _unused(shape: list[int]) -> dict[str, Any]:
    role = "vector" if len(shape) <= 1 else "hidden"
    return {"role": role, "shape": shape, "fan_in_width": len(shape) > 1, "fan_out_width": True,
            "module": "", "used": False}


def _aliases(cap: Capture, fqn: str) -> list[str]:
    """All skeleton FQNs naming the same Parameter as ``fqn``."""
    root = cap.modules.get("")
    if root is None:
        return [fqn]
    target = root.get_parameter(fqn)
    return [n for n, p in root.named_parameters(remove_duplicate=False) if p is target] or [fqn]


def _primary(aliases: list[str], info: dict[str, dict[str, Any]]) -> str:
    for alias in aliases:
        if info[alias]["role"] == "embedding":
            return alias
    return aliases[0]


def _prefixes(fqn: str) -> list[str]:
    parts = fqn.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _real_outputs(cap: Capture, fqn: str, skel_block: str, real_block: str) -> list[str]:
    """A branch output module of skeleton block ``skel_block`` in ``real_block``: every real module it stands
    for there (the capture keeps 2 of a ModuleList of experts, the branch sums them all)."""
    if not skel_block or not (fqn == skel_block or fqn.startswith(skel_block + ".")):
        return [_rename(fqn, skel_block, real_block)]
    reals = [_rename(r, skel_block, real_block) for r in cap.real_names(fqn)]
    mine = [r for r in reals if r == real_block or r.startswith(real_block + ".")]
    return list(dict.fromkeys(mine)) or [_rename(fqn, skel_block, real_block)]


def _buffer_product(model: nn.Module, factors: list[tuple[str, int]]) -> float:
    """The product of the one-element buffers of the real model, each to its power (+1 or -1: a divisor);
    1.0 for a buffer that is not one element, is on meta, or is a zero divisor."""
    if not factors:
        return 1.0
    buffers = dict(model.named_buffers(remove_duplicate=False))
    out = 1.0
    for fqn, power in factors:
        buf = buffers.get(fqn)
        if buf is not None and buf.numel() == 1 and buf.device.type != "meta" and buf.is_floating_point():
            value = float(buf.reshape(()).item())
            if value or power > 0:
                out *= value**power
    return out


def _rename(fqn: str, old_prefix: str, new_prefix: str) -> str:
    if old_prefix and (fqn == old_prefix or fqn.startswith(old_prefix + ".")):
        return new_prefix + fqn[len(old_prefix) :]
    return fqn


def _real_like(skel_fqn: str, real_name: str, skel_name: str) -> str:
    """Map a skeleton FQN into the block of ``real_name`` (same shortening offset)."""
    if real_name == skel_name:
        return skel_fqn
    # find the differing block index and substitute it
    r, s = real_name.split("."), skel_name.split(".")
    out = skel_fqn.split(".")
    for i, (a, b) in enumerate(zip(r, s, strict=False)):
        if a != b and i < len(out) and out[i] == b:
            out[i] = a
    return ".".join(out)


def _block_key(fqn: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in fqn.split("."))
