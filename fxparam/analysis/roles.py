"""Parameter roles from width dimensions (issue 13), with a reason for each and user overrides.

A parameter's role follows from which of its axes are width dims (``fxparam.analysis.dims``)
and how it is used, for any rank:

========================  ===========  ==============================================
fan-in (read axes)        fan-out      role
========================  ===========  ==============================================
fixed (data, vocabulary)  width        embedding (input weight: embedding rules)
width                     width        hidden (per matrix, e.g. each MoE expert)
width                     fixed        readout (output weight: readout rules, routers)
none                      none         vector (biases, gains)
========================  ===========  ==============================================

(Tensor Programs V, Table 3 / docs/reference/parameterizations.md "Roles".)  A weight
read by an embedding lookup and also by a matmul into a fixed output (a functional tied
readout, ``F.linear(h, wte.weight)``) keeps embedding rules and records where the readout
multiplier alpha_out/m_d goes (``multiplier_at``).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from fxparam.analysis.dims import Contraction, DimAnalysis
from fxparam.analysis.graph import ModelGraph
from fxparam.analysis.structure import SCALE_OPS, TRANSPARENT_OPS, StructureFinder

#: Role names a user may pass in ``roles={...}`` overrides.
OVERRIDE_ROLES = ("embedding", "hidden", "readout", "vector", "frozen")
#: (fan_in_width, fan_out_width) that each role implies, for overrides.
_ROLE_FLAGS = {"embedding": (False, True), "hidden": (True, True), "readout": (True, False),
               "vector": (False, True), "frozen": (False, False)}
INPUT = "input:"  # same prefix as fxparam.passes.width.INPUT (no import: passes depend on analysis)


class UnclassifiedWarning(UserWarning):
    """fxparam could not be sure of a parameter's role; the message names the override."""


def _module_of(fqn: str) -> str:
    return fqn.rpartition(".")[0]


def _axes_text(dims: DimAnalysis, pnode: str, axes: list[int], shape: list[int]) -> str:
    return ", ".join(f"{shape[a]} {dims.describe((pnode, a))}" for a in axes) or "-"


def use_role(dims: DimAnalysis, c: Contraction) -> str:
    """Role implied by one use: which of its read / written axes are width."""
    if c.kind == "embedding":
        return "embedding"
    in_w = any(dims.is_width((c.param, a)) for a in c.in_axes)
    out_w = any(dims.is_width((c.param, a)) for a in c.out_axes)
    if in_w and out_w:
        return "hidden"
    if in_w:
        return "readout"
    if out_w:
        return "embedding"
    return "fixed"


def param_role(mg: ModelGraph, sf: StructureFinder, dims: DimAnalysis, pnode: str, alias: str,
               uses: list[Contraction]) -> dict[str, Any]:
    """Role, width flags, fans and reason of one parameter alias from its uses' width dims."""
    shape = list(mg.shape(pnode) or [])
    waxes = dims.width_axes(pnode)
    base: dict[str, Any] = {"shape": shape, "module": "", "used": True, "width_dims": waxes}
    if not uses:
        anyuse = bool(list(mg.g.successors(pnode))) if pnode in mg.g else False
        base["used"] = anyuse
        if not anyuse:
            return base | {"role": "vector" if len(shape) <= 1 else "hidden", "fan_in_width": len(shape) > 1,
                           "fan_out_width": True, "reason": "never used in the captured forward"}
        fixed = [a for a in range(len(shape)) if a not in waxes]
        in_block = any(sf.block_of(mg.stack.get(u, [])) for u in mg.g.successors(pnode))
        text = _axes_text(dims, pnode, list(range(len(shape))), shape)
        if len(shape) >= 2 and waxes and fixed and not in_block:
            # a table added to the input (a learned position Parameter): fixed rows -> width
            return base | {"role": "embedding", "fan_in_width": False, "fan_out_width": True,
                           "fan_in": shape[fixed[0]], "fan_out": shape[waxes[-1]], "fan_in_dim": fixed[0],
                           "reason": f"[{text}] added outside the blocks, no matmul"}
        return base | {"role": "vector", "fan_in_width": False, "fan_out_width": bool(waxes),
                       "fan_out": shape[-1] if shape else None,
                       "reason": f"[{text}], no matmul"}
    roles = [use_role(dims, c) for c in uses]
    emb = [c for c, r in zip(uses, roles, strict=True) if c.kind == "embedding"]
    readouts = [c for c, r in zip(uses, roles, strict=True) if r in ("readout", "fixed") and c.kind == "linear"]
    if emb:
        c = emb[0]
        out = {"role": "embedding", "fan_in_width": False,
               "fan_out_width": any(dims.is_width((pnode, a)) for a in c.out_axes),
               "fan_in_dim": c.in_axes[0] if c.in_axes else 0,
               "fan_in": shape[c.in_axes[0]] if c.in_axes else shape[0],
               "fan_out": shape[c.out_axes[0]] if c.out_axes else shape[-1],
               "reason": f"lookup: rows [{_axes_text(dims, pnode, c.in_axes, shape)}] -> "
                         f"[{_axes_text(dims, pnode, c.out_axes, shape)}]"}
        if readouts:  # the same tensor read out functionally: F.linear(h, wte.weight)
            r = readouts[0]
            site = readout_site(mg, sf, alias, r)
            out["multiplier_at"] = site
            out["reason"] += f"; read out by {_op_text(mg, r, alias)} (multiplier at {site or '?'})"
            if site is None:
                out["warning"] = _no_site_warning(mg, alias, r)
        return base | out
    order = {"hidden": 0, "readout": 1, "embedding": 2, "fixed": 3}
    best = min(zip(uses, roles, strict=True), key=lambda cr: order[cr[1]])
    c, role = best
    fan_in_dim = c.in_axes[0] if len(c.in_axes) == 1 else None
    fan_out_dim = c.out_axes[0] if len(c.out_axes) == 1 else None
    fields = {"fan_in_dim": fan_in_dim,
              "fan_in": shape[fan_in_dim] if fan_in_dim is not None else None,
              "fan_out": shape[fan_out_dim] if fan_out_dim is not None else None}
    text = (f"{_op_text(mg, c, alias)}: [{_axes_text(dims, pnode, c.in_axes, shape)}] -> "
            f"[{_axes_text(dims, pnode, c.out_axes, shape)}]")
    if c.other_axes:
        text += f", per [{_axes_text(dims, pnode, c.other_axes, shape)}]"
    if role == "hidden":
        return base | fields | {"role": "hidden", "fan_in_width": True, "fan_out_width": True,
                                "reason": text}
    if role == "embedding":
        return base | fields | {"role": "embedding", "fan_in_width": False, "fan_out_width": True,
                                "reason": f"{text}, fixed fan-in"}
    site = readout_site(mg, sf, alias, c)
    out = {"multiplier_at": site}
    if site is None:
        out["warning"] = _no_site_warning(mg, alias, c)
    if role == "readout":
        return base | fields | out | {"role": "readout", "fan_in_width": True, "fan_out_width": False,
                                      "reason": text}
    if dims.width_classes or any(dims.param_grows.values()):
        # fixed -> fixed in a model that has width (Linear(16, vocab) after a width -> 16 readout): its
        # fan-in does not grow, so no readout multiplier (a second alpha_out/m_d would compound) and no
        # width factor on init or LR: width-independent, as a vector (TP5 Table 3)
        return base | fields | {"role": "vector", "fan_in_width": False, "fan_out_width": False,
                                "reason": f"{text}, no width dim (fixed fan-in and fan-out: width-independent)"}
    # no width dim on either side: a single layer, nothing can be told to grow with width
    return base | fields | out | {"role": "readout", "fan_in_width": False, "fan_out_width": False,
                                  "reason": f"{text}, no width dim (single layer)"}


def _op_text(mg: ModelGraph, c: Contraction, alias: str | None = None) -> str:
    parts = mg.target(c.op).split(".")
    t = parts[-2] if len(parts) >= 2 else parts[0]
    owner = mg.owner.get(c.op, "")
    if alias is not None and owner and owner == _module_of(alias):
        return t  # the parameter's own module: no name (keeps repeated blocks' rows equal)
    return f"{t} in {owner or '<root>'}"


def _no_site_warning(mg: ModelGraph, alias: str, c: Contraction) -> str:
    return (f"{alias}: read out by {_op_text(mg, c)} on an input that is not the output of a module "
            "used only there: fxparam cannot place the readout multiplier alpha_out/m_d. Compute the "
            "readout in an nn.Linear (or give its input its own module), or pass "
            f"roles={{{alias!r}: 'vector'}} to keep SP rules for it knowingly.")


def readout_site(mg: ModelGraph, sf: StructureFinder, alias: str, c: Contraction) -> str | None:
    """Where a readout's multiplier alpha_out/m_d is applied (a ``Plan.multipliers`` key).

    ``"input:<module>"`` when the readout is the forward of the module owning the weight (an
    ``nn.Linear`` head); otherwise the module whose output is the readout's only input use
    (``ln_f`` for ``F.linear(self.ln_f(x), self.wte.weight)``); None when there is no such module.
    """
    owner = mg.owner.get(c.op, "")
    if owner and owner == _module_of(alias) and _linear_in_module_input(mg, sf, c.activation, owner):
        return INPUT + owner
    if c.activation is None or c.activation not in mg.nodes:
        return None
    prod = sf.producer(c.activation)
    module = mg.owner.get(prod, "")
    if not module or module == owner or owner.startswith(module + "."):
        return None
    # every use of the producer's value (through shape-only ops) must end at this readout
    stack, seen = [prod], {prod}
    while stack:
        cur = stack.pop()
        for nxt in mg.g.successors(cur):
            if nxt == c.op or nxt in seen:
                continue
            if mg.target(nxt) in TRANSPARENT_OPS and mg.owner.get(nxt, "") in (owner, module, ""):
                seen.add(nxt)
                stack.append(nxt)
                continue
            if mg.owner.get(nxt, "") == module or mg.owner.get(nxt, "").startswith(module + "."):
                continue  # inside the producing module itself
            return None
    return module


def _linear_in_module_input(mg: ModelGraph, sf: StructureFinder, activation: str | None, owner: str) -> bool:
    """The readout's input is ``owner``'s input through views and constant factors only (an nn.Linear head,
    mup's MuReadout scaling its input): an input multiplier on ``owner`` then scales the readout alone.  False
    when ``owner`` computes the readout's input itself (a raw router Parameter in an MoE block reading
    ``self.ln(x)``: the block's input is the residual stream, skip included)."""
    cur = activation
    for _ in range(64):
        if cur is None or cur not in mg.nodes:
            return cur is None
        where = mg.owner.get(cur, "")
        if where != owner and not where.startswith(owner + "."):
            return True  # produced outside the module: its input
        args = sf._data_args(cur)
        if len(args) != 1 or mg.target(cur) not in TRANSPARENT_OPS | SCALE_OPS:
            return False
        cur = args[0]
    return False


def matches(name: str, key: str) -> bool:
    """``key`` is an exact FQN or ``re:<pattern>`` (searched in the FQN)."""
    if key.startswith("re:"):
        return re.search(key[3:], name) is not None
    return name == key


def override(name: str, info: dict[str, Any], roles: dict[str, str] | None) -> dict[str, Any]:
    """Apply the first matching user override (exact FQN first, then patterns in order)."""
    if not roles:
        return info
    keys = [k for k in roles if k == name] or [k for k in roles if k.startswith("re:") and matches(name, k)]
    if not keys:
        return info
    role = roles[keys[0]]
    if role not in OVERRIDE_ROLES:
        from fxparam.errors import ConfigError

        raise ConfigError(f"roles[{keys[0]!r}] = {role!r}: choose one of {', '.join(OVERRIDE_ROLES)}")
    fin, fout = _ROLE_FLAGS[role]
    new = dict(info) | {"role": role, "fan_in_width": fin, "fan_out_width": fout,
                        "reason": f"override roles[{keys[0]!r}] (analysis: {info.get('role')}: {info.get('reason', '')})"}
    new.pop("warning", None)
    if role == "readout" and not new.get("multiplier_at"):
        new["multiplier_at"] = INPUT + info.get("module", "")
    return new


def check_overrides(names: list[str], roles: dict[str, str] | None) -> None:
    """Refuse ``roles={...}`` keys that match no parameter, bad patterns and unknown role names.

    Args:
        names: the model's parameter FQNs (tied aliases included).
        roles: ``{"fqn" or "re:pattern": role}`` as passed to inspect/plan/transform.

    Raises:
        ConfigError: a role not in ``OVERRIDE_ROLES``; a ``re:`` pattern that does not compile or
            matches no FQN; an exact key that is no parameter FQN (the message names the closest
            FQNs), since an override that silently applies to nothing leaves the analysis's role.
    """
    if not roles:
        return
    import difflib

    from fxparam.errors import ConfigError

    for key, role in roles.items():
        if role not in OVERRIDE_ROLES:
            raise ConfigError(f"roles[{key!r}] = {role!r}: choose one of {', '.join(OVERRIDE_ROLES)}")
        if key.startswith("re:"):
            try:
                re.compile(key[3:])
            except re.error as e:
                raise ConfigError(f"roles[{key!r}]: not a valid regular expression ({e})") from None
            if not any(matches(n, key) for n in names):
                raise ConfigError(f"roles[{key!r}] matches no parameter FQN (searched with re.search in "
                                  f"{len(names)} names, e.g. {names[0]!r})" if names else
                                  f"roles[{key!r}]: the model has no parameters")
        elif key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            under = [n for n in names if n.startswith(key + ".")][:3]
            hint = (f"; did you mean {', '.join(map(repr, under or close))}?" if (under or close)
                    else "; use an exact parameter FQN or 're:<pattern>'")
            raise ConfigError(f"roles[{key!r}]: no parameter has this FQN{hint}")


def warn_unclassified(messages: list[str]) -> None:
    for m in messages:
        warnings.warn(m, UnclassifiedWarning, stacklevel=3)
