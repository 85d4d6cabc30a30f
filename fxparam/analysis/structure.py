"""Structural facts from the activation graph: residual sites, blocks, roles, attention, norms.

Everything here is graph reasoning, not name matching: a residual add is an add whose
one operand (the skip) is an ancestor of the other (the branch) through parameters; a
readout is a matmul outside every residual branch whose output reaches the model
output without another parameterised matmul; an embedding is a parameter indexed by
the input.  Width dimensions follow from where a matmul sits: input-side dims are
fixed by the data (vocabulary, features), output-side dims by the task (vocabulary,
classes), every other dim grows with width.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import networkx as nx
import torch.nn as nn

from fxparam.analysis.facts import AttentionSite, NormSite
from fxparam.analysis.graph import (
    ADD_OPS,
    EMBEDDING_OPS,
    LAYER_NORM_OPS,
    LINEAR_OPS,
    MATMUL_OPS,
    RMS_NORM_OPS,
    SDPA_OPS,
    SOFTMAX_OPS,
    WEIGHT_VIEW_OPS,
    ModelGraph,
)

#: Ops that are linear and shape-only: a branch multiplier commutes with them.
TRANSPARENT_OPS = {
    "aten.dropout.default",
    "aten.view.default",
    "aten.reshape.default",
    "aten._unsafe_view.default",
    "aten.contiguous.default",
    "aten.clone.default",
    "aten.alias.default",
    "aten.to.dtype",
    "aten.to.dtype_layout",
    "aten._to_copy.default",
    "aten.type_as.default",
    "aten.identity.default",
}
#: Attribute names under which attention modules commonly keep their logit scale.
SCALE_ATTRS = ("scaling", "scale", "softmax_scale", "attn_scale", "scale_factor", "norm_factor_inv")


@dataclass
class ParamUse:
    kind: str  # "embedding" | "matmul" | "bias" | "norm" | "other"
    node: str  # the consuming op node
    owner: str  # module FQN owning the op
    activation: str | None = None  # the activation operand of a matmul
    fan_in_dim: int | None = None  # which weight dim is contracted


@dataclass
class RawSite:
    add: str
    skip: str
    branch_nodes: list[str]
    block: str = ""
    branches: list[str] = field(default_factory=list)
    output_modules: list[str] = field(default_factory=list)


class StructureFinder:
    """Runs the structural queries on one ModelGraph (skeleton FQNs)."""

    def __init__(self, mg: ModelGraph) -> None:
        self.mg = mg
        self.g = mg.g
        self.param_nodes = set(mg.param_of)
        self.uses = self._param_uses()
        self.param_op_nodes = {u.node for uses in self.uses.values() for u in uses if u.kind in ("matmul", "embedding")}
        self._anc: dict[str, set[str]] = {}
        self.sites = self._residual_sites()
        self.in_branch: set[str] = set()
        for site in self.sites:
            self.in_branch |= self._between(site.skip, site.branch_nodes)

    # ----------------------------------------------------------------- helpers

    def ancestors(self, n: str) -> set[str]:
        if n not in self._anc:
            self._anc[n] = nx.ancestors(self.g, n)
        return self._anc[n]

    def _between(self, skip: str, branch_nodes: list[str]) -> set[str]:
        desc = nx.descendants(self.g, skip)
        out: set[str] = set()
        for b in branch_nodes:
            out |= (self.ancestors(b) & desc) | {b}
        return out

    def _has_param(self, nodes: set[str]) -> bool:
        return any(self.param_nodes & set(self.g.predecessors(n)) for n in nodes)

    def _same_shape(self, *names: str) -> bool:
        shapes = {self.mg.shape(n) for n in names}
        return len(shapes) == 1 and None not in shapes

    def producer(self, n: str) -> str:
        """Walk back through linear shape-only ops to the node that computes the value."""
        while self.mg.target(n) in TRANSPARENT_OPS:
            args = [a for a in self.mg.tensor_args(n) if a not in self.param_nodes]
            if len(args) != 1:
                break
            n = args[0]
        return n

    def is_repeated_member(self, fqn: str) -> bool:
        parent = fqn.rpartition(".")[0] if "." in fqn else ""
        cls = self.mg.capture.module_classes.get(parent)
        return cls is not None and issubclass(cls, (nn.ModuleList, nn.Sequential)) and fqn != ""

    def block_of(self, stack: list[str]) -> str | None:
        for fqn in reversed(stack):
            if self.is_repeated_member(fqn):
                return fqn
        return None

    # ----------------------------------------------------------------- param uses

    def _param_uses(self) -> dict[str, list[ParamUse]]:
        uses: dict[str, list[ParamUse]] = {}
        for pnode in self.mg.param_of:
            found: list[ParamUse] = []
            frontier = [(pnode, False)]
            while frontier:
                cur, flipped = frontier.pop()
                for user in self.g.successors(cur):
                    t = self.mg.target(user)
                    args = self.mg.tensor_args(user)
                    if t in WEIGHT_VIEW_OPS and args and args[0] == cur:
                        frontier.append((user, flipped ^ WEIGHT_VIEW_OPS[t]))
                        continue
                    found.append(self._classify_use(cur, user, t, args, flipped))
            uses[pnode] = found
        return uses

    def _classify_use(self, cur: str, user: str, t: str, args: list[str], flipped: bool) -> ParamUse:
        owner = self.mg.owner.get(user, "")
        node = self.mg.nodes[user]
        pos = [i for i, a in enumerate(node.args) if getattr(a, "name", None) == cur]
        p = pos[0] if pos else -1
        if t in EMBEDDING_OPS and p == 0:
            return ParamUse("embedding", user, owner, fan_in_dim=0)
        if t in LINEAR_OPS:
            if p == 1:
                act = args[0]
                return ParamUse("matmul", user, owner, activation=act, fan_in_dim=0 if flipped else 1)
            return ParamUse("bias", user, owner)
        if t in MATMUL_OPS:
            if t == "aten.addmm.default" and p == 0:
                return ParamUse("bias", user, owner)
            weight_pos = 2 if t == "aten.addmm.default" else 1
            if p == weight_pos:  # x @ W: W is [in, out]
                act = node.args[weight_pos - 1].name
                return ParamUse("matmul", user, owner, activation=act, fan_in_dim=1 if flipped else 0)
            if p == weight_pos - 1:  # W @ x: W is [out, in]
                act = node.args[weight_pos].name
                return ParamUse("matmul", user, owner, activation=act, fan_in_dim=0 if flipped else 1)
        if t in LAYER_NORM_OPS or t in RMS_NORM_OPS:
            return ParamUse("norm", user, owner)
        if t in ADD_OPS and any(u.startswith("aten.mm") or u.startswith("aten.matmul") or u.startswith("aten.bmm")
                                for u in (self.mg.target(a) for a in args if a != cur)):
            return ParamUse("bias", user, owner)
        return ParamUse("other", user, owner)

    # ----------------------------------------------------------------- residuals

    def _residual_sites(self) -> list[RawSite]:
        sites: list[RawSite] = []
        by_add: dict[str, RawSite] = {}
        adds = [n for n in self.g.nodes if self.mg.target(n) in ADD_OPS]
        adds.sort(key=self.mg.order.__getitem__)
        for n in adds:
            args = [a for a in self.mg.tensor_args(n) if a not in self.param_nodes]
            if len(args) != 2 or not self._same_shape(n, *args):
                continue
            a, b = args
            if a in self.ancestors(b):
                skip, branch = a, b
            elif b in self.ancestors(a):
                skip, branch = b, a
            else:
                merged = self._merge_parallel(n, a, b, by_add)
                if merged is not None:
                    by_add[n] = merged
                continue
            branch_nodes = self._split_parallel(skip, branch)
            between = self._between(skip, branch_nodes)
            if not self._has_param(between - {skip}):
                continue
            site = RawSite(add=n, skip=skip, branch_nodes=branch_nodes)
            sites.append(site)
            by_add[n] = site
        for site in sites:
            self._name_site(site)
        return sites

    def _split_parallel(self, skip: str, branch: str) -> list[str]:
        """NeoX writes ``mlp_out + attn_out + x``: the branch is itself an add of two branches."""
        b = self.producer(branch)
        if self.mg.target(b) in ADD_OPS:
            parts = [a for a in self.mg.tensor_args(b) if a not in self.param_nodes]
            if (
                len(parts) == 2
                and self._same_shape(b, *parts)
                and all(skip in self.ancestors(p) for p in parts)
                and all(self._has_param(self._between(skip, [p]) - {skip}) for p in parts)
                and parts[0] not in self.ancestors(parts[1])
                and parts[1] not in self.ancestors(parts[0])
            ):
                return parts
        return [branch]

    def _merge_parallel(self, n: str, a: str, b: str, by_add: dict[str, RawSite]) -> RawSite | None:
        """``x + attn(ln1 x) + mlp(ln2 x)``: the second add extends the first site."""
        for stream, other in ((a, b), (b, a)):
            site = by_add.get(stream)
            if site is None or site.skip not in self.ancestors(other) or stream in self.ancestors(other):
                continue
            if not self._has_param(self._between(site.skip, [other]) - {site.skip}):
                continue
            site.branch_nodes.append(other)
            site.add = n
            return site
        return None

    def _name_site(self, site: RawSite) -> None:
        stack = self.mg.stack.get(site.add, [])
        producers = [self.producer(b) for b in site.branch_nodes]
        block = self.block_of(stack)
        if block is None:
            block = self.block_of(self.mg.stack.get(producers[0], []))
        site.output_modules = [self.mg.owner.get(p, "") for p in producers]
        if block is None:
            block = site.output_modules[0]
        site.block = block
        branches = []
        for p, out_mod in zip(producers, site.output_modules):
            pstack = self.mg.stack.get(p, [])
            child = next((m for m in pstack if m.startswith(block + ".") and m.count(".") == block.count(".") + 1), None)
            branches.append(child or out_mod)
        site.branches = branches

    # ----------------------------------------------------------------- roles

    def width(self) -> int | None:
        for site in self.sites:
            shape = self.mg.shape(site.add)
            if shape:
                return shape[-1]
        fans = Counter()
        for pnode, uses in self.uses.items():
            for u in uses:
                if u.kind == "matmul":
                    shape = self.mg.shape(pnode)
                    if shape and len(shape) == 2 and u.fan_in_dim is not None:
                        fans[shape[u.fan_in_dim]] += 1
        return fans.most_common(1)[0][0] if fans else None

    def input_side(self, use: ParamUse) -> bool:
        """No parameterised op upstream of the matmul's input: its fan-in is a data dimension."""
        if use.activation is None:
            return False
        anc = self.ancestors(use.activation) | {use.activation}
        return not (anc & self.param_op_nodes)

    def output_side(self, use: ParamUse) -> bool:
        """The matmul's output reaches a model output with no parameterised op after it."""
        seen = {use.node}
        queue = deque([use.node])
        while queue:
            cur = queue.popleft()
            if cur in self.mg.outputs:
                return True
            for nxt in self.g.successors(cur):
                if nxt in seen or nxt in self.param_op_nodes:
                    continue
                seen.add(nxt)
                queue.append(nxt)
        return False

    # ----------------------------------------------------------------- attention

    def attention_sites(self) -> list[AttentionSite]:
        sites: list[AttentionSite] = []
        for n in sorted(self.g.nodes, key=self.mg.order.__getitem__):
            t = self.mg.target(n)
            if t in SDPA_OPS:
                node = self.mg.nodes[n]
                q_shape = self.mg.shape(node.args[0].name) or (0,)
                head_dim = q_shape[-1]
                scale = node.kwargs.get("scale")
                if scale is None:
                    scale = 1.0 / math.sqrt(head_dim)
                sites.append(self._attention(n, head_dim, float(scale), "sdpa"))
            elif t in SOFTMAX_OPS:
                found = self._manual_attention(n)
                if found is not None:
                    sites.append(self._attention(n, found[0], found[1], "manual"))
        return sites

    def _manual_attention(self, softmax: str) -> tuple[int, float] | None:
        scale = 1.0
        cur = self.mg.tensor_args(softmax)[0]
        for _ in range(12):
            t = self.mg.target(cur)
            node = self.mg.nodes[cur]
            if t in ("aten.matmul.default", "aten.bmm.default"):
                ops = self.mg.tensor_args(cur)
                if len(ops) == 2 and not (set(ops) & self.param_nodes):
                    shape = self.mg.shape(ops[0])
                    return (shape[-1] if shape else 0), scale
                return None
            if t in ("aten.mul.Tensor", "aten.div.Tensor") and len(node.args) == 2 and isinstance(node.args[1], (int, float)):
                scale = scale * node.args[1] if t == "aten.mul.Tensor" else scale / node.args[1]
                cur = node.args[0].name
                continue
            args = [a for a in self.mg.tensor_args(cur) if a not in self.param_nodes]
            if not args:
                return None
            # masks and biases are added: follow the operand that carries the scores
            cur = max(args, key=lambda a: len(self.ancestors(a)))
        return None

    def _attention(self, n: str, head_dim: int, scale: float, kind: str) -> AttentionSite:
        module = self.mg.owner.get(n, "")
        attr = attr_module = None
        stack = self.mg.stack.get(n, [])
        for fqn in reversed(stack):
            mod = self.mg.capture.modules.get(fqn)
            for name in SCALE_ATTRS:
                value = getattr(mod, name, None) if mod is not None else None
                if isinstance(value, float) and math.isclose(value, scale, rel_tol=1e-6):
                    attr, attr_module = name, fqn
                    break
            if attr is not None:
                break
        return AttentionSite(
            module=module, head_dim=head_dim, scale=scale, kind=kind, scale_attr=attr, scale_attr_module=attr_module
        )

    # ----------------------------------------------------------------- norms

    def norm_sites(self) -> list[NormSite]:
        by_owner: dict[str, set[str]] = {}
        for n in self.g.nodes:
            by_owner.setdefault(self.mg.owner.get(n, ""), set()).add(self.mg.target(n))
        out: list[NormSite] = []
        for fqn, targets in by_owner.items():
            mod = self.mg.capture.modules.get(fqn)
            if mod is None or fqn == "":
                continue
            own = [k for k, p in mod._parameters.items() if p is not None]
            if any(mod._parameters[k].dim() != 1 for k in own):
                continue
            kind = None
            if targets & LAYER_NORM_OPS:
                kind = "layernorm"
            elif targets & RMS_NORM_OPS:
                kind = "rmsnorm"
            elif "aten.rsqrt.default" in targets and "aten.mean.dim" in targets:
                kind = "layernorm" if "aten.sub.Tensor" in targets else "rmsnorm"
            if kind is not None:
                out.append(
                    NormSite(
                        module=fqn,
                        kind=kind,
                        params=[f"{fqn}.{k}" for k in own],
                        module_class=type(mod).__name__,
                    )
                )
        return out
