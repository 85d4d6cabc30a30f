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
    block_call: str | None = None  # nn_module_stack key of the block's call (one per application)
    stream: int = 0  # which residual stream (encoder and decoder of a seq2seq model: two)
    application: int = 0  # nth application of the block module in its stream (shared blocks)
    output_calls: list[str] = field(default_factory=list)  # call keys of the output modules
    unscalable: str = ""  # why no module's output is the branch alone (empty output_modules)
    own_factor: float = 1.0  # product of the constants between the branch's module output and the add
    # scalar buffers there, (FQN, +1 multiplied / -1 divided by); values read on the real model
    own_buffers: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Call:
    """One call of a module in the captured forward (a module applied n times has n calls)."""

    key: str  # the nn_module_stack key: unique per call (export suffixes repeats with ``@k``)
    fqn: str
    cls: str


#: Ops that multiply their first (data) operand by a constant: linear in the branch.
SCALE_OPS = {"aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar"}
#: Shape-only ops on the way from q / k to their product (a scale folded into q is found through them).
QK_VIEW_OPS = TRANSPARENT_OPS | {
    "aten.transpose.int",
    "aten.permute.default",
    "aten.expand.default",
    "aten.unsqueeze.default",
    "aten.squeeze.dim",
    "aten.t.default",
    "aten.slice.Tensor",
    "aten.select.int",
    "aten.split.Tensor",
    "aten.getitem",
    "<built-in function getitem>",
    "aten.split_with_sizes.default",
    "aten.unflatten.int",
    "aten.flatten.using_ints",
}
#: Batched matmuls with a built-in logit scale ``alpha`` (``beta * input + alpha * b1 @ b2``).
ALPHA_MATMUL_OPS = {"aten.baddbmm.default", "aten.addbmm.default"}
QK_MATMUL_OPS = {"aten.matmul.default", "aten.bmm.default", "aten.mm.default"}
EINSUM_OP = "aten.einsum.default"
#: Ops a score tensor may pass through between q.k and softmax without changing its scale.
SCORE_PASS_OPS = QK_VIEW_OPS | ADD_OPS | {
    "aten.sub.Tensor",
    "aten.where.self",
    "aten.masked_fill.Scalar",
    "aten.masked_fill.Tensor",
    "aten.masked_fill_.Scalar",
    "aten.float.default",
}


class StructureFinder:
    """Runs the structural queries on one ModelGraph (skeleton FQNs)."""

    def __init__(self, mg: ModelGraph) -> None:
        self.mg = mg
        self.g = mg.g
        self.notes: list[str] = []  # structure decisions the user must know about (warned by analyse)
        self.param_nodes = set(mg.param_of)
        self.uses = self._param_uses()
        self.param_op_nodes = {u.node for uses in self.uses.values() for u in uses if u.kind in ("matmul", "embedding")}
        self._anc: dict[str, set[str]] = {}
        self.calls: dict[str, list[Call]] = {n: self._call_stack(n) for n in self.g.nodes}
        self.data: set[str] = set()  # nodes computed from the user inputs (not weights or constants)
        for inp in mg.user_inputs:
            if inp in self.g:
                self.data |= nx.descendants(self.g, inp) | {inp}
        self.sites = self._residual_sites()
        self.attention_scale_nodes: set[str] = set()  # scaling ops of found attention logits (attention_sites)
        #: attention node (SDPA / softmax) -> (query node, axis of the head dim): read again in a second build
        self.attention_query: dict[str, tuple[str, int]] = {}
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
        self._assign_blocks(sites)
        for site in sites:
            self._name_site(site)
        self._check_output_calls(sites)
        return sites

    def _check_output_calls(self, sites: list[RawSite]) -> None:
        """A branch's output module that is also called outside every residual branch cannot carry the
        depth multiplier (it would scale that call too): such sites get no output module, and a reason."""
        calls_of: dict[str, set[str]] = {}
        for stack in self.calls.values():
            for c in stack:
                calls_of.setdefault(c.fqn, set()).add(c.key)
        branch_calls: dict[str, set[str]] = {}
        for site in sites:
            for fqn, key in zip(site.output_modules, site.output_calls, strict=False):
                branch_calls.setdefault(fqn, set()).add(key)
        extra = {fqn: calls_of.get(fqn, set()) - keys for fqn, keys in branch_calls.items()}
        for site in sites:
            bad = [fqn for fqn in site.output_modules if extra.get(fqn)]
            if bad:
                site.unscalable = (
                    f"module {bad[0]!r} ends this branch but is also called outside every residual branch "
                    f"({len(extra[bad[0]])} other call(s)): a multiplier on it would scale those calls too"
                )
                site.output_modules, site.output_calls = [], []

    # ----------------------------------------------------------------- blocks and depth

    def _call_stack(self, n: str) -> list[Call]:
        """Module calls owning ``n``, outermost first (export keys each call of a module apart)."""
        from fxparam.capture import clean_module_path

        stack = self.mg.nodes[n].meta.get("nn_module_stack") or {}
        out: list[Call] = []
        for key, (path, cls) in stack.items():
            fqn = clean_module_path(path)
            if fqn:
                out.append(Call(key=str(key), fqn=fqn, cls=str(getattr(cls, "__qualname__", cls))))
        return out

    def _data_args(self, n: str) -> list[str]:
        return [a for a in self.mg.tensor_args(n) if a in self.data and a not in self.param_nodes]

    def _stream_predecessor(self, skip: str, site_of_add: dict[str, RawSite]) -> RawSite | None:
        """The site whose output this skip continues (through norms, dropout, views, constants)."""
        cur = skip
        for _ in range(64):
            if cur in site_of_add:
                return site_of_add[cur]
            args = self._data_args(cur)
            if len(args) != 1:
                return None
            cur = args[0]
        return None

    def _assign_blocks(self, sites: list[RawSite]) -> None:
        """Group residual sites into streams and blocks (DESIGN: depth = blocks *applied*).

        A stream is a chain of sites, each skip continuing the previous site's output.
        Along a stream, the sites' module-call stacks are compared: the first level at
        which they part is the block level when a module class is called more than once
        there (blocks repeat; hybrids alternate), or when their common parent call holds the
        stream's start (it is the stack of blocks, e.g. ``encoder``); otherwise (distinct
        sub-layers of a single block, T5's ``layer.0`` / ``layer.1``) the common parent
        call is the one block.
        Each call is one application, so a block module applied n times counts n.
        """
        site_of_add = {s.add: s for s in sites}
        chains: list[list[RawSite]] = []
        chain_of: dict[str, int] = {}
        for s in sites:
            prev = self._stream_predecessor(s.skip, site_of_add)
            if prev is not None and prev.add in chain_of:
                idx = chain_of[prev.add]
                chains[idx].append(s)
            else:
                idx = len(chains)
                chains.append([s])
            chain_of[s.add] = idx
            s.stream = idx
        for chain in chains:
            self._blocks_of_chain(chain)
            seen: dict[str, dict[str, int]] = {}
            for s in chain:
                per_block = seen.setdefault(s.block, {})
                s.application = per_block.setdefault(s.block_call or s.add, len(per_block))

    def _blocks_of_chain(self, chain: list[RawSite]) -> None:
        start = chain[0].skip
        while self.mg.target(start) in TRANSPARENT_OPS and len(self._data_args(start)) == 1:
            start = self._data_args(start)[0]
        start_calls = {c.key for c in self.calls.get(start, [])}
        stacks = [self.calls.get(s.add, []) for s in chain]
        k = 0
        while True:
            entries = [st[k].key if len(st) > k else None for st in stacks]
            if entries[0] is None or len(set(entries)) > 1:
                break
            k += 1
        common = stacks[0][:k]
        entries = [st[k].key if len(st) > k else None for st in stacks]
        chosen: list[Call | None]
        if len(set(entries)) > 1:
            level = [st[k] if len(st) > k else None for st in stacks]
            distinct = {c.key: c.cls for c in level if c is not None}
            repeats = len(set(distinct.values())) < len(distinct)  # one class called twice: blocks
            parent = common[-1] if common else None
            if parent is not None and parent.key not in start_calls and (not repeats or None in level):
                chosen = [parent] * len(chain)
            else:
                chosen = [c if c is not None else self._branch_call(s) for s, c in zip(chain, level, strict=False)]
                if repeats and None not in level:
                    chosen = self._stages_to_blocks(stacks, k, chosen)
        else:
            # every add in the same calls: one block, the innermost call holding them (not the stack)
            inner = next((c for c in reversed(common) if c.key not in start_calls), None)
            chosen = [inner if inner is not None else self._branch_call(s) for s in chain]
        for s, c in zip(chain, chosen, strict=False):
            if c is not None:
                s.block, s.block_call = c.fqn, c.key

    def _stages_to_blocks(self, stacks: list[list[Call]], k: int, chosen: list[Call | None]) -> list[Call | None]:
        """Containers of blocks chosen as blocks: descend to the blocks they hold.

        Stages of one class (``ModuleDict{a: Sequential(Blk, Blk), b: Sequential(Blk)}``) part the sites at
        level ``k`` like blocks do. When each stage holds calls of ONE repeated child class one level
        further in, in UNEQUAL numbers, those children are the blocks (depth 3 there, not 2). Equal
        numbers stay stages: that is also the shape of a block made of two sub-layers of one class
        (MLP-Mixer's token- and channel-mixing ``PreNormResidual``).
        """
        groups: dict[str, dict[str, str]] = {}  # stage call key -> {child call key: child class}
        for st, c in zip(stacks, chosen, strict=False):
            if c is None or len(st) <= k + 1:
                return chosen
            groups.setdefault(c.key, {})[st[k + 1].key] = st[k + 1].cls
        classes = {cls for children in groups.values() for cls in children.values()}
        counts = {len(children) for children in groups.values()}
        if len(classes) != 1 or min(counts) < 2 and len(counts) == 1:
            return chosen
        if len(counts) == 1:  # equal numbers: stages of blocks, or blocks of sub-layers -- cannot tell: say so
            stage = next(c for c in chosen if c is not None)
            n_children = sum(len(children) for children in groups.values())
            self.notes.append(
                f"blocks: counted {len(groups)} blocks like {stage.fqn!r}, each holding {counts.pop()} sub-layers of "
                f"class {classes.pop()}; if those are residual blocks themselves the depth is {n_children}, not "
                f"{len(groups)}. CompleteP's m_L = depth / base_depth is right only when base_depth counts the same "
                "units: give base_depth as this count at the base model, or hold each block in a ModuleList"
            )
            return chosen
        return [st[k + 1] for st in stacks]

    def _branch_call(self, site: RawSite) -> Call | None:
        """For an add written outside any block module: the outermost call computing the branch."""
        add_keys = {c.key for c in self.calls.get(site.add, [])}
        for b in site.branch_nodes:
            for c in self.calls.get(self.producer(b), []):
                if c.key not in add_keys:
                    return c
        return None

    def _is_output_of(self, n: str, call: Call) -> bool:
        if n in self.mg.outputs:
            return True
        return any(call.key not in {c.key for c in self.calls.get(u, [])} for u in self.g.successors(n))

    def _branch_output(self, site: RawSite, b: str) -> Call | None:
        """The module whose output is this branch's contribution, skip excluded.

        Walks back from the add through ops that are linear in the branch (views, dropout,
        a constant or a LayerScale gain, ``0.5 * attn(x)``) to the innermost module call
        that does not hold the add: scaling its output scales the branch and never the
        skip.  None when the branch is computed by the add's own module (no module to hook).
        """
        add_keys = {c.key for c in self.calls.get(site.add, [])}
        cur = b
        factor = 1.0  # the model's own constant on this branch (0.5 * attn, 1/sqrt(2L)): site.own_factor
        buffers: list[tuple[str, int]] = []  # a tensor factor that is a buffer (register_buffer('s', 1/sqrt(2L)))
        for _ in range(64):
            walked = [cur]  # through shape-only ops first: prefer the Linear over a Dropout module
            while self.mg.target(cur) in TRANSPARENT_OPS and len(self._data_args(cur)) == 1:
                cur = self._data_args(cur)[0]
                walked.append(cur)
            for n in reversed(walked):
                for c in reversed([c for c in self.calls.get(n, []) if c.key not in add_keys]):
                    if self._is_output_of(n, c):
                        site.own_factor, site.own_buffers = factor, buffers
                        return c
            t = self.mg.target(cur)
            args = self._data_args(cur)
            inner = [c for c in self.calls.get(cur, []) if c.key not in add_keys]
            if inner:
                site.own_factor, site.own_buffers = factor, buffers
                return inner[0]
            node = self.mg.nodes[cur]
            first = getattr(node.args[0], "name", None) if node.args else None
            if t in SCALE_OPS and len(args) == 1 and (t.startswith("aten.mul") or args[0] == first):
                scaled = self._scalar_factor(cur)
                if scaled is not None and scaled[1] is not None:
                    factor *= scaled[1]
                elif scaled is not None:
                    buffers += self._buffer_factor(cur, scaled[0])
                cur = args[0]
                continue
            return None
        return None

    def _branch_outputs(self, site: RawSite, b: str, budget: int = 256) -> list[Call] | None:
        """The module calls whose outputs, all scaled by one factor, scale the branch ``b`` and nothing else.

        One call (:meth:`_branch_output`), or, for a branch summed inline from several module
        outputs (an MoE block's ``sum(g_e * expert_e(h)) + shared(h)``), one call per term: a sum
        is scaled by scaling every term, a product ``g * y`` by scaling ``y`` when ``g`` does not
        depend on it (a router's gate).  None when any term has no such call (then the whole
        branch is unscalable: scaling only some terms would be silently wrong).
        """
        one = self._branch_output(site, b)
        if one is not None or budget <= 0:
            return [one] if one is not None else None
        cur = b
        while self.mg.target(cur) in TRANSPARENT_OPS and len(self._data_args(cur)) == 1:
            cur = self._data_args(cur)[0]
        t, args = self.mg.target(cur), self._data_args(cur)
        if self.calls.get(cur) and any(c.key not in {a.key for a in self.calls.get(site.add, [])}
                                       for c in self.calls[cur]):
            return None  # inside a module call that is not the branch's output: nothing to split
        if any(a in self.param_nodes for a in self.mg.tensor_args(cur)):
            return None
        node = self.mg.nodes[cur]
        if t in ADD_OPS and len(args) == 1 and len(node.args) == 2 and any(
            isinstance(a, (int, float)) and a == 0 for a in node.args
        ):
            return self._branch_outputs(site, args[0], budget - 1)  # sum(...) starts with ``0 + t``
        first = getattr(node.args[0], "name", None) if node.args else None
        if t in SCALE_OPS and len(args) == 1 and (t.startswith("aten.mul") or args[0] == first):
            return self._branch_outputs(site, args[0], budget - 1)  # sum(experts) / E: a constant factor
        if len(args) != 2:
            return None
        if t in ADD_OPS:
            if self.mg.nodes[cur].kwargs.get("alpha", 1) != 1:
                return None
            parts = [self._branch_outputs(site, a, budget // 2) for a in args]
            if any(p is None for p in parts):
                return None
            return [c for p in parts for c in p]  # type: ignore[union-attr]
        if t in ("aten.mul.Tensor",):
            shape = self.mg.shape(cur)
            order = sorted(args, key=lambda a: self.mg.shape(a) != shape)  # the full-shape operand first
            for y in order:
                g = next(a for a in args if a != y) if args[0] != args[1] else y
                if g == y or y in self.ancestors(g):
                    continue  # g depends on y: scaling y would change g too
                found = self._branch_outputs(site, y, budget // 2)
                if found is not None:
                    return found
        return None

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
        producers = [self.producer(b) for b in site.branch_nodes]
        found = [self._branch_outputs(site, b) for b in site.branch_nodes]
        outputs = [c[0].fqn if c else None for c in found]
        site.output_modules = [c.fqn for cs in found if cs for c in cs]
        site.output_calls = [c.key for cs in found if cs for c in cs]
        if None in outputs:
            # all or nothing: a multiplier on only some of a branch's terms (a shared expert, not the routed
            # ones) would scale the branch wrongly with no error
            site.unscalable = "the branch is computed inline by the module that adds it"
            site.output_modules, site.output_calls = [], []

        if not site.block:
            site.block = site.output_modules[0] if site.output_modules else self.mg.owner.get(site.add, "")
        block = site.block
        branches = []
        for p, out_mod in zip(producers, outputs, strict=False):
            pstack = self.mg.stack.get(p, [])
            child = next((m for m in pstack if m.startswith(block + ".") and m.count(".") == block.count(".") + 1), None)
            branches.append(child or out_mod or block)
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
        """Every softmax over q.k, with its logit scale wherever the model keeps it.

        The scale is the product of what sits between q, k and the softmax: SDPA's
        ``scale`` (default 1/sqrt(d_head)), a constant multiply/divide of the scores, a
        fused batched matmul's ``alpha`` (``baddbmm``), and constants folded into q or k
        before their product (``q * s``).  A softmax over q.k whose scale passes through
        anything else (a tensor factor, a nonlinearity such as logit soft-capping) gets
        ``scale=None``: the passes then warn instead of guessing.
        """
        sites: list[AttentionSite] = []
        self.attention_nodes: list[str] = []  # the SDPA / softmax node of each site, in order
        for n in sorted(self.g.nodes, key=self.mg.order.__getitem__):
            before = len(sites)
            t = self.mg.target(n)
            if t in SDPA_OPS:
                node = self.mg.nodes[n]
                q_shape = self.mg.shape(node.args[0].name) or (0,)
                head_dim = q_shape[-1]
                self.attention_query[n] = (node.args[0].name, -1)
                scale = node.kwargs.get("scale")
                if scale is None:
                    scale = 1.0 / math.sqrt(head_dim)
                fq, fk = self._fold(node.args[0].name), self._fold(node.args[1].name)
                if fq is None or fk is None:
                    sites.append(self._attention(n, head_dim, None, "manual"))
                elif fq * fk != 1.0:  # a scale folded into q/k: SDPA's kwarg is only part of it
                    sites.append(self._attention(n, head_dim, float(scale) * fq * fk, "manual"))
                else:
                    sites.append(self._attention(n, head_dim, float(scale), "sdpa"))
            elif t in SOFTMAX_OPS:
                found = self._manual_attention(n)
                if found is not None:
                    site = self._attention(n, found[0], found[1], "manual")
                    sites.append(site.model_copy(update={"softmax_index": self._softmax_index(n, site.module)}))
            self.attention_nodes += [n] * (len(sites) - before)
        return sites

    def _softmax_index(self, n: str, module: str) -> int | None:
        """How many softmax ops run before ``n`` in the same call of ``module`` (nested calls included)."""
        key = next((c.key for c in self.calls.get(n, []) if c.fqn == module), None)
        if key is None:
            return None
        return sum(1 for m in self.g.nodes if self.mg.target(m) in SOFTMAX_OPS
                   and self.mg.order[m] < self.mg.order[n] and any(c.key == key for c in self.calls.get(m, [])))

    def _buffer_factor(self, n: str, data: str) -> list[tuple[str, int]]:
        """``[(buffer FQN, +1 | -1)]`` when the other operand of the scaling op ``n`` (through views) is a
        buffer that multiplies (+1) or divides (-1) ``data``, else []."""
        for a in self.mg.nodes[n].args:
            name = getattr(a, "name", None)
            if name is None or name == data:
                continue
            src = a
            while src.op != "placeholder" and len(src.all_input_nodes) == 1 and str(src.target) in TRANSPARENT_OPS:
                src = src.all_input_nodes[0]
            fqn = self.mg.capture.node_buffer.get(src.name)
            return [(fqn, -1 if self.mg.target(n).startswith("aten.div") else 1)] if fqn else []
        return []

    def _scalar_factor(self, n: str) -> tuple[str, float | None] | None:
        """For a multiply/divide with one data operand: (that operand, the constant factor or None)."""
        node = self.mg.nodes[n]
        args = self._data_args(n)
        if self.mg.target(n) not in SCALE_OPS or len(args) != 1 or len(node.args) != 2:
            return None
        a, b = node.args
        is_mul = self.mg.target(n).startswith("aten.mul")
        if getattr(a, "name", None) == args[0]:
            other = b
        elif is_mul:
            other = a
        else:
            return None  # c / x is not linear in x
        if isinstance(other, (int, float)):
            return args[0], float(other) if is_mul else 1.0 / float(other)
        return args[0], None  # a tensor factor (a buffer, a learned temperature): not a known constant

    def _fold(self, n: str) -> float | None:
        """Constant factor applied to q (or k) on its way from its projection to the product."""
        factor = 1.0
        for _ in range(32):
            t = self.mg.target(n)
            scaled = self._scalar_factor(n)
            if scaled is not None:
                if scaled[1] is None:
                    return None
                self.attention_scale_nodes.add(n)
                factor *= scaled[1]
                n = scaled[0]
                continue
            args = self._data_args(n)
            if t in QK_VIEW_OPS and len(args) == 1:
                n = args[0]
                continue
            return factor  # the projection, RoPE, a norm...: the start of q
        return factor

    def _manual_attention(self, softmax: str) -> tuple[int, float | None] | None:
        scale: float | None = 1.0
        scale_nodes: list[str] = []  # kept only if this softmax turns out to be over q.k
        cur = self.mg.tensor_args(softmax)[0]
        for _ in range(32):
            t = self.mg.target(cur)
            node = self.mg.nodes[cur]
            qk_einsum = self._qk_einsum(cur) if t == EINSUM_OP else None
            if t in QK_MATMUL_OPS or t in ALPHA_MATMUL_OPS or qk_einsum is not None:
                if qk_einsum is not None:  # einsum("bhqd,bhkd->bhqk", q, k): one contracted index
                    a, b, axis = qk_einsum
                    shape = self.mg.shape(a) if a is not None else None
                    head_dim = shape[axis] if shape and axis < len(shape) else 0
                else:
                    names = [getattr(a, "name", None) for a in node.args[:3]]
                    a, b = (names[1], names[2]) if t in ALPHA_MATMUL_OPS else (names[0], names[1])
                if a is None or b is None or not ({a, b} <= self.data) or {a, b} & self.param_nodes:
                    return None  # a product with a weight: a projection, not q.k
                if qk_einsum is None:
                    shape = self.mg.shape(a)
                    head_dim = shape[-1] if shape else 0
                    axis = -1
                self.attention_query[softmax] = (a, axis)
                alpha = float(node.kwargs.get("alpha", 1.0)) if t in ALPHA_MATMUL_OPS else 1.0
                self.attention_scale_nodes.update(scale_nodes)
                fa, fb = self._fold(a), self._fold(b)
                if scale is None or fa is None or fb is None:
                    return head_dim, None
                return head_dim, scale * alpha * fa * fb
            if t in LINEAR_OPS or t in EMBEDDING_OPS or set(self.mg.tensor_args(cur)) & self.param_nodes:
                return None  # scores straight from a parameterised op: a router or classifier, not q.k
            scaled = self._scalar_factor(cur)
            if scaled is not None:
                scale = None if scale is None or scaled[1] is None else scale * scaled[1]
                scale_nodes.append(cur)
                cur = scaled[0]
                continue
            args = self._data_args(cur)
            if not args:
                return None
            if t not in SCORE_PASS_OPS:
                scale = None  # a nonlinearity (soft-capping) or an op fxparam does not model
            # masks and biases are added: follow the operand that carries the scores
            cur = max(args, key=lambda a: len(self.ancestors(a)))
        return None

    def _qk_einsum(self, n: str) -> tuple[str | None, str | None, int] | None:
        """``einsum(eq, [q, k])`` contracting exactly one index (the head dim): (q, k, its axis in q), else None."""
        node = self.mg.nodes[n]
        if len(node.args) < 2 or not isinstance(node.args[0], str) or not isinstance(node.args[1], (list, tuple)):
            return None
        eq, ops = node.args[0].replace(" ", ""), node.args[1]
        if len(ops) != 2 or "->" not in eq or "." in eq:
            return None
        lhs, out = eq.split("->")
        terms = lhs.split(",")
        if len(terms) != 2:
            return None
        contracted = (set(terms[0]) & set(terms[1])) - set(out)
        if len(contracted) != 1:
            return None
        a, b = (getattr(o, "name", None) for o in ops)
        (c,) = contracted
        return a, b, terms[0].index(c)

    def _attention(self, n: str, head_dim: int, scale: float | None, kind: str) -> AttentionSite:
        module = self.mg.owner.get(n, "")
        attr = attr_module = None
        stack = self.mg.stack.get(n, []) if scale is not None else []
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
