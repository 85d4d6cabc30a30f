"""Dimension identities: which axes of every parameter grow with the model's width.

Every axis of every tensor in the captured graph gets an identity.  Ops unify
identities (a union-find over ``(node, axis)``): a matmul's contracted axes are one
dimension, broadcasting add/mul lines axes up from the right, permute/transpose
move them, view/reshape keeps the axes it does not touch, an embedding lookup
keeps the index's axes and adds the table's feature axis, a convolution ties
in-channels to the weight's axis 1 and out-channels to its axis 0.  Where an op
*derives* a dimension from others (a reshape splitting ``d`` into ``heads x
head_dim`` or merging them back, ``cat``, slicing, ``split``), the identities are
linked rather than unified.

Identities are then classed (this is the width analysis of issue 13):

- *fixed* dims come from the data or the task: the axes of user inputs (batch,
  sequence, image, input features), the indexed axis of an embedding table (the
  vocabulary, whatever its size), convolution kernel axes, the expert axis of a
  grouped/selected expert weight, and the axes of model outputs (vocabulary,
  classes);
- *width* dims are the residual stream (the feature axes of a residual add that
  are not fixed), the fan-out of a weight whose fan-in is width when that fan-out
  is read by another weight or flows back into width (MLP hidden, heads x head
  dim, expert hidden, channels), and dims derived from width by reshapes;
- a weight fan-out that is never read by another weight (an MoE router's expert
  logits) is *terminal*: not width.

A vocabulary equal to the width is still a vocabulary: identities, not sizes,
decide.  Roles follow from a parameter's width dims (see ``DimAnalysis.role_of``):
fixed -> width is an input weight, width -> width hidden, width -> fixed a readout,
none a vector (Tensor Programs V, Table 3; docs/reference/parameterizations.md).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from fxparam.analysis.graph import ModelGraph

_getitem = operator.getitem
Key = tuple[str, int]  # (value name, axis); a tuple output's value name is "node#i"

#: Ops through which a weight reaches its matmul (layout changes, casts, expert selection).
_WEIGHT_PATH = {
    "aten.t.default", "aten.numpy_T.default", "aten.transpose.int", "aten.permute.default", "aten.view.default",
    "aten.reshape.default", "aten.to.dtype", "aten.to.dtype_layout", "aten._to_copy.default",
    "aten.contiguous.default", "aten.clone.default", "aten.alias.default", "aten.detach.default",
    "aten.type_as.default", "aten.select.int", "aten.index.Tensor", "aten.to.device",
    "aten.expand.default", "aten.unsqueeze.default", "aten.squeeze.dim",
}
_GROUPED_MM = ("_grouped_mm", "grouped_mm")
_CONV = {"aten.convolution.default", "aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
         "aten.conv_transpose1d.default", "aten.conv_transpose2d.input", "aten.conv_transpose3d.input"}
_NORM_FIRST = {"aten.layer_norm.default", "aten.native_layer_norm.default", "aten.rms_norm.default",
               "aten._fused_rms_norm.default"}
_SDPA_PREFIX = ("aten.scaled_dot_product_attention", "aten._scaled_dot_product")
_REDUCE = {"aten.sum.dim_IntList", "aten.mean.dim", "aten.amax.default", "aten.amin.default",
           "aten.var.correction", "aten.std.correction", "aten.logsumexp.default", "aten.var.dim",
           "aten.norm.ScalarOpt_dim", "aten.linalg_vector_norm.default", "aten.max.dim", "aten.min.dim",
           "aten.var_mean.correction", "aten.argmax.default", "aten.argmin.default", "aten.prod.dim_int"}
_VIEW = {"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
         "aten.unflatten.int", "aten.view_as.default", "aten.reshape_as.default"}

#: Why a fixed identity is fixed (first matching wins in reports).
FIXED_KINDS = ("kernel", "embedding rows", "experts", "indexed", "input", "output")


@dataclass
class Contraction:
    """One use of a parameter in a matmul-like op.

    Attributes:
        param: placeholder node of the parameter.
        op: the consuming op node.
        kind: "linear" (matmul/linear/conv/grouped expert matmul) or "embedding" (lookup).
        in_axes: parameter axes contracted with the activation (fan-in).
        out_axes: parameter axes that become axes of the output (fan-out).
        other_axes: parameter axes neither (expert index, kernel window).
        activation: the activation operand, if any.
    """

    param: str
    op: str
    kind: str
    in_axes: list[int]
    out_axes: list[int]
    other_axes: list[int] = field(default_factory=list)
    activation: str | None = None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Key, Key] = {}

    def find(self, k: Key) -> Key:
        self.parent.setdefault(k, k)
        root = k
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[k] != root:
            self.parent[k], k = root, self.parent[k]
        return root

    def union(self, a: Key, b: Key) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _shape(val: object) -> tuple[int, ...] | None:
    if isinstance(val, torch.Tensor):
        try:
            return tuple(int(s) for s in val.shape)
        except (TypeError, RuntimeError):  # symbolic sizes
            return None
    return None


class DimAnalysis:
    """Identities of all dims of a captured graph and their width classes.

    Args:
        mg: the captured model's graph.
        residual_adds: names of residual-add nodes (their non-fixed axes seed width).
        changed: optional ``{param FQN: [axes whose size changes at a second width]}``
            from a second capture; axes listed there are width, others fixed.

    Attributes:
        width: size of the residual-stream width dim (None when no width dim exists).
        contractions: per parameter placeholder, its matmul-like uses.
    """

    def __init__(self, mg: ModelGraph, residual_adds: Iterable[str] = (),
                 changed: dict[str, list[int]] | None = None) -> None:
        self.mg = mg
        self.uf = _UnionFind()
        self.links: list[tuple[Key, Key]] = []  # derived (reshape/cat/slice) links
        self.groups: list[tuple[list[Key], list[Key]]] = []  # one reshape group: these dims <-> those
        self.fixed_seeds: dict[Key, str] = {}
        self.contractions: dict[str, list[Contraction]] = {}
        self.unhandled: set[str] = set()
        self.terminal: set[Key] = set()
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.params = set(mg.param_of)
        for node in mg.nodes.values():
            self._visit(node)
        self.param_grows: dict[str, set[int]] = {}
        for pnode, fqn in mg.param_of.items():
            if fqn in (changed or {}):
                self.param_grows[pnode] = set((changed or {})[fqn])
        self._classify(list(residual_adds), changed or {})

    # ------------------------------------------------------------------ plumbing

    def shape(self, name: str) -> tuple[int, ...] | None:
        if name in self._shapes:
            return self._shapes[name]
        base, _, idx = name.partition("#")
        node = self.mg.nodes.get(base)
        if node is None:
            return None
        val = node.meta.get("val")
        if idx:
            val = val[int(idx)] if isinstance(val, (list, tuple)) and int(idx) < len(val) else None
        s = _shape(val)
        if s is not None:
            self._shapes[name] = s
        return s

    def keys(self, name: str) -> list[Key]:
        s = self.shape(name)
        return [(name, i) for i in range(len(s))] if s is not None else []

    def cls(self, key: Key) -> Key:
        return self.uf.find(key)

    def _u(self, a: Key, b: Key) -> None:
        self.uf.union(a, b)

    def _link(self, a: Key, b: Key, group: bool = True) -> None:
        self.uf.find(a), self.uf.find(b)
        self.links.append((a, b))
        if group:
            self.groups.append(([a], [b]))

    def _name(self, a: object) -> str | None:
        return a.name if isinstance(a, torch.fx.Node) else None

    def _same_size_or_link(self, a: Key, b: Key) -> None:
        sa, sb = self.shape(a[0]), self.shape(b[0])
        if sa is None or sb is None:
            return
        if sa[a[1]] == sb[b[1]]:
            self._u(a, b)
        else:
            self._link(a, b)

    def _broadcast(self, out: str, args: list[str]) -> bool:
        so = self.shape(out)
        if so is None:
            return False
        shapes = [(a, self.shape(a)) for a in args]
        shapes = [(a, s) for a, s in shapes if s is not None]
        for _a, s in shapes:
            if len(s) > len(so) or any(x not in (1, y) for x, y in zip(reversed(s), reversed(so), strict=False)):
                return False
        for a, s in shapes:
            off = len(so) - len(s)
            for i, x in enumerate(s):
                if x == so[off + i] and x != 1:
                    self._u((a, i), (out, off + i))
        return True

    def _weight_param(self, name: str) -> tuple[str, dict[int, int]] | None:
        """Follow a weight operand back to its parameter: (param node, operand axis -> param axis)."""
        cur = name
        for _ in range(8):
            if cur in self.params:
                break
            node = self.mg.nodes.get(cur.partition("#")[0])
            if node is None or str(node.target) not in _WEIGHT_PATH or not node.args:
                return None
            src = self._name(node.args[0])
            if src is None:
                return None
            cur = src
        else:
            return None
        if cur not in self.params:
            return None
        mapping = {}
        pkeys = self.keys(cur)
        for i, k in enumerate(self.keys(name)):
            c = self.cls(k)
            for pk in pkeys:
                if self.cls(pk) == c:
                    mapping[i] = pk[1]
        return cur, mapping

    def _record(self, op: str, weight: str, kind: str, w_in: list[int], w_out: list[int],
                activation: str | None) -> None:
        found = self._weight_param(weight)
        if found is None:
            return
        param, mapping = found
        ins = sorted({mapping[i] for i in w_in if i in mapping})
        outs = sorted({mapping[i] for i in w_out if i in mapping})
        nd = len(self.shape(param) or ())
        other = [i for i in range(nd) if i not in ins and i not in outs]
        self.contractions.setdefault(param, []).append(
            Contraction(param=param, op=op, kind=kind, in_axes=ins, out_axes=outs, other_axes=other,
                        activation=activation))

    # ------------------------------------------------------------------ ops

    def _visit(self, node: torch.fx.Node) -> None:  # noqa: C901 - one dispatch table
        name = node.name
        if node.op == "placeholder":
            if name in self.mg.user_inputs:
                for k in self.keys(name):
                    self.fixed_seeds.setdefault(self.cls(k), "input")
            return
        if node.op == "output":
            for a in _flat_nodes(node.args):
                for k in self.keys(a.name):
                    self.fixed_seeds.setdefault(k, "output")
            return
        if node.op != "call_function":
            return
        t = str(node.target)
        args = node.args
        n = self._name
        if node.target is _getitem:
            src = n(args[0])
            if src is not None and isinstance(args[1], int):
                srcval = self.mg.nodes[src].meta.get("val")
                if isinstance(srcval, (list, tuple)):
                    for k in self.keys(name):
                        self._u(k, (f"{src}#{args[1]}", k[1]))
            return
        out = name
        so = self.shape(out)
        if t == "aten.linear.default":
            x, w = n(args[0]), n(args[1])
            b = n(args[2]) if len(args) > 2 else None
            sx, sw = self.shape(x), self.shape(w)
            if sx is None or sw is None or so is None:
                return
            if len(sw) == 2:
                self._u((x, len(sx) - 1), (w, 1))
                self._u((out, len(so) - 1), (w, 0))
            elif len(sw) == 1:
                self._u((x, len(sx) - 1), (w, 0))
            for i in range(len(sx) - 1):
                self._u((x, i), (out, i))
            if b is not None and self.shape(b):
                self._u((b, 0), (out, len(so) - 1))
            self._record(name, w, "linear", [1] if len(sw) == 2 else [0], [0] if len(sw) == 2 else [], x)
            return
        if t in ("aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.matmul.default",
                 "aten.baddbmm.default") or any(g in t for g in _GROUPED_MM):
            if any(g in t for g in _GROUPED_MM):
                a, b = n(args[0]), n(args[1])
                sa, sb = self.shape(a), self.shape(b)
                if sa is None or sb is None or so is None:
                    return
                self._u((a, len(sa) - 1), (b, len(sb) - 2))
                self._u((out, len(so) - 1), (b, len(sb) - 1))
                for i in range(len(sa) - 1):
                    self._u((a, i), (out, i))
                if len(sb) == 3:
                    self.fixed_seeds.setdefault((b, 0), "experts")
                self._record(name, b, "linear", [len(sb) - 2], [len(sb) - 1], a)
                self._record(name, a, "linear", [len(sa) - 1], [], b)
                return
            off = 1 if t in ("aten.addmm.default", "aten.baddbmm.default") else 0
            a, b = n(args[off]), n(args[off + 1])
            sa, sb = self.shape(a), self.shape(b)
            if sa is None or sb is None or so is None or len(sa) < 1 or len(sb) < 1:
                return
            if len(sa) >= 2 and len(sb) >= 2:
                self._u((a, len(sa) - 1), (b, len(sb) - 2))
                self._u((out, len(so) - 1), (b, len(sb) - 1))
                self._u((out, len(so) - 2), (a, len(sa) - 2))
                for s_name, s in ((a, sa), (b, sb)):  # batch dims broadcast from the right
                    for i in range(len(s) - 2):
                        j = len(so) - len(s) + i
                        if j >= 0 and s[i] == so[j] and s[i] != 1:
                            self._u((s_name, i), (out, j))
                self._record(name, b, "linear", [len(sb) - 2], [len(sb) - 1], a)
                self._record(name, a, "linear", [len(sa) - 1], [len(sa) - 2], b)
            elif len(sa) >= 2 and len(sb) == 1:
                self._u((a, len(sa) - 1), (b, 0))
            if off:
                bias = n(args[0])
                if bias is not None:
                    self._broadcast(out, [bias])
            return
        if t == "aten.einsum.default":
            self._einsum(node)
            return
        if t in ("aten.embedding.default",):
            w, idx = n(args[0]), n(args[1])
            sw, si = self.shape(w), self.shape(idx)
            if sw is None or si is None or so is None:
                return
            for i in range(len(si)):
                self._u((idx, i), (out, i))
            self._u((w, len(sw) - 1), (out, len(so) - 1))
            self.fixed_seeds.setdefault((w, 0), "embedding rows")
            found = self._weight_param(w)
            if found is not None:
                p, mapping = found
                self.contractions.setdefault(p, []).append(
                    Contraction(param=p, op=name, kind="embedding", in_axes=[mapping.get(0, 0)],
                                out_axes=[mapping.get(len(sw) - 1, len(sw) - 1)], activation=idx))
            return
        if t == "aten.index_select.default":
            x, dim, idx = n(args[0]), int(args[1]), n(args[2])
            sx = self.shape(x)
            if sx is None or so is None:
                return
            dim %= len(sx)
            for i in range(len(sx)):
                if i != dim:
                    self._u((x, i), (out, i))
            self.fixed_seeds.setdefault((x, dim), "indexed")
            return
        if t == "aten.index.Tensor":
            x = n(args[0])
            sx = self.shape(x)
            idxs = list(args[1])
            if sx is None or so is None:
                return
            present = [i for i, a in enumerate(idxs) if a is not None]
            if len(present) == 1:
                p = present[0]
                si = self.shape(n(idxs[p])) or ()
                for i in range(p):
                    self._u((x, i), (out, i))
                for i in range(len(si)):
                    self._u((n(idxs[p]), i), (out, p + i))
                for i in range(p + 1, len(sx)):
                    self._u((x, i), (out, len(si) + i - 1))
                self.fixed_seeds.setdefault((x, p), "indexed")
            return
        if t == "aten.select.int":
            x, dim = n(args[0]), int(args[1])
            sx = self.shape(x)
            if sx is None:
                return
            dim %= len(sx)
            rest = [i for i in range(len(sx)) if i != dim]
            for j, i in enumerate(rest):
                self._u((x, i), (out, j))
            self.fixed_seeds.setdefault((x, dim), "indexed")
            return
        if t in _VIEW:
            self._view(n(args[0]), out)
            return
        if t in ("aten.permute.default",):
            x = n(args[0])
            for j, i in enumerate(args[1]):
                self._u((x, i % len(args[1])), (out, j))
            return
        if t in ("aten.transpose.int", "aten.swapaxes.default"):
            x = n(args[0])
            sx = self.shape(x)
            if sx is None:
                return
            a, b = int(args[1]) % len(sx), int(args[2]) % len(sx)
            perm = list(range(len(sx)))
            perm[a], perm[b] = perm[b], perm[a]
            for j, i in enumerate(perm):
                self._u((x, i), (out, j))
            return
        if t in ("aten.t.default", "aten.numpy_T.default"):
            x = n(args[0])
            sx = self.shape(x) or ()
            for j in range(len(sx)):
                self._u((x, len(sx) - 1 - j), (out, j))
            return
        if t in ("aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default"):
            x = n(args[0])
            self._drop_ones(x, out)
            return
        if t == "aten.expand.default":
            self._broadcast(out, [n(args[0])])
            return
        if t == "aten.slice.Tensor":
            x = n(args[0])
            sx = self.shape(x)
            if sx is None or so is None:
                return
            dim = (int(args[1]) if len(args) > 1 else 0) % len(sx)
            for i in range(len(sx)):
                if i == dim and sx[i] != so[i]:
                    self._link((x, i), (out, i))
                else:
                    self._u((x, i), (out, i))
            return
        if t in ("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default",
                 "aten.unsafe_split.Tensor", "aten.tensor_split.sections"):
            x = n(args[0])
            sx = self.shape(x)
            vals = node.meta.get("val")
            if sx is None or not isinstance(vals, (list, tuple)):
                return
            dim = (int(args[2]) if len(args) > 2 else int(node.kwargs.get("dim", 0))) % len(sx)
            for j in range(len(vals)):
                part = f"{name}#{j}"
                for i in range(len(sx)):
                    if i == dim:
                        self._same_size_or_link((x, i), (part, i))
                    else:
                        self._u((x, i), (part, i))
            return
        if t == "aten.unbind.int":
            x = n(args[0])
            sx = self.shape(x)
            vals = node.meta.get("val")
            if sx is None or not isinstance(vals, (list, tuple)):
                return
            dim = (int(args[1]) if len(args) > 1 else 0) % len(sx)
            rest = [i for i in range(len(sx)) if i != dim]
            for j in range(len(vals)):
                for jj, i in enumerate(rest):
                    self._u((x, i), (f"{name}#{j}", jj))
            return
        if t == "aten.cat.default":
            parts = [n(a) for a in args[0]]
            parts = [p for p in parts if p is not None and self.shape(p) and len(self.shape(p)) == len(so or ())]
            if so is None:
                return
            dim = (int(args[1]) if len(args) > 1 else 0) % len(so)
            for p in parts:
                for i in range(len(so)):
                    if i == dim:
                        self._same_size_or_link((p, i), (out, i))
                    else:
                        self._u((p, i), (out, i))
            return
        if t == "aten.stack.default":
            parts = [n(a) for a in args[0]]
            if so is None:
                return
            dim = (int(args[1]) if len(args) > 1 else 0) % len(so)
            for p in parts:
                sp = self.shape(p) or ()
                for i in range(len(sp)):
                    self._u((p, i), (out, i if i < dim else i + 1))
            return
        if t in _NORM_FIRST or t == "aten.group_norm.default":
            x = n(args[0])
            target = f"{name}#0" if isinstance(node.meta.get("val"), (list, tuple)) else out
            sx = self.shape(x)
            if sx is None:
                return
            for i in range(len(sx)):
                self._u((x, i), (target, i))
            ws = [n(a) for a in args[1:] if isinstance(a, torch.fx.Node)]
            for w in ws:
                sw = self.shape(w) or ()
                if t == "aten.group_norm.default":
                    if len(sw) == 1:
                        self._u((w, 0), (x, 1))
                    continue
                for i in range(len(sw)):
                    self._u((w, i), (x, len(sx) - len(sw) + i))
            return
        if "batch_norm" in t or "instance_norm" in t:
            x = n(args[0])
            sx = self.shape(x)
            target = f"{name}#0" if isinstance(node.meta.get("val"), (list, tuple)) else out
            if sx is None:
                return
            for i in range(len(sx)):
                self._u((x, i), (target, i))
            for a in args[1:5]:
                w = n(a)
                if w is not None and len(self.shape(w) or ()) == 1:
                    self._u((w, 0), (x, 1))
            return
        if t.startswith(_SDPA_PREFIX):
            q, k, v = n(args[0]), n(args[1]), n(args[2])
            target = f"{name}#0" if isinstance(node.meta.get("val"), (list, tuple)) else out
            sq, sk, sv, st = self.shape(q), self.shape(k), self.shape(v), self.shape(target)
            if None in (sq, sk, sv, st):
                return
            self._u((q, len(sq) - 1), (k, len(sk) - 1))
            self._u((k, len(sk) - 2), (v, len(sv) - 2))
            self._u((target, len(st) - 1), (v, len(sv) - 1))
            self._u((target, len(st) - 2), (q, len(sq) - 2))
            for i in range(len(sq) - 2):
                self._u((q, i), (target, i))
                if sk[i] == sq[i]:
                    self._u((k, i), (q, i))
                else:
                    self._link((k, i), (q, i))  # grouped-query attention: kv heads
                if sv[i] == sq[i]:
                    self._u((v, i), (q, i))
                else:
                    self._link((v, i), (q, i))
            return
        if t in _CONV:
            self._conv(node)
            return
        if t in ("aten.topk.default", "aten.sort.default", "aten.sort.stable", "aten.kthvalue.default",
                 "aten.cummax.default", "aten.cummin.default"):
            x = n(args[0])
            sx = self.shape(x)
            vals = node.meta.get("val")
            if sx is None or not isinstance(vals, (list, tuple)):
                return
            dim = -1
            if t == "aten.topk.default" and len(args) > 2:
                dim = int(args[2])
            elif t.startswith("aten.sort") and len(args) > 1 and isinstance(args[1], int):
                dim = int(args[1])
            dim %= len(sx)
            for j in range(len(vals)):
                for i in range(len(sx)):
                    if i != dim or t != "aten.topk.default":
                        self._u((x, i), (f"{name}#{j}", i))
            return
        if t in _REDUCE:
            self._reduce(node)
            return
        if t == "aten.one_hot.default":
            x = n(args[0])
            sx = self.shape(x) or ()
            for i in range(len(sx)):
                self._u((x, i), (out, i))
            return
        if t in ("aten.index_put_.default", "aten.index_put.default", "aten.index_add.default",
                 "aten.index_add_.default", "aten.scatter_add.default", "aten.scatter.src",
                 "aten.scatter_add_.default"):
            x = n(args[0])
            for k in self.keys(x):
                if so is not None:
                    self._u(k, (out, k[1]))
            return
        if t in ("aten.repeat_interleave.self_int", "aten.repeat.default", "aten.tile.default"):
            x = n(args[0])
            sx = self.shape(x)
            if sx is None or so is None or len(sx) != len(so):
                return
            for i in range(len(sx)):
                self._same_size_or_link((x, i), (out, i))
            return
        if so is None:
            return
        tensors = [a.name for a in _flat_nodes(list(args) + list(node.kwargs.values()))
                   if self.shape(a.name) is not None]
        if not tensors:
            return
        if not self._broadcast(out, tensors):
            self.unhandled.add(t)

    def _einsum(self, node: torch.fx.Node) -> None:
        eq, operands = node.args[0], [self._name(a) for a in node.args[1]]
        eq = eq.replace(" ", "")
        if "..." in eq or "->" not in eq:
            self.unhandled.add("aten.einsum.default")
            return
        lhs, rhs = eq.split("->")
        terms = lhs.split(",")
        where: dict[str, list[Key]] = {}
        for term, op in zip(terms, operands, strict=True):
            for i, ch in enumerate(term):
                where.setdefault(ch, []).append((op, i))
        for i, ch in enumerate(rhs):
            where.setdefault(ch, []).append((node.name, i))
        for ks in where.values():
            for k in ks[1:]:
                if (self.shape(k[0]) or ())[k[1]] != 1:
                    self._u(ks[0], k)
        for term, op in zip(terms, operands, strict=True):
            others = [o for o in operands if o != op]
            w_in = [i for i, ch in enumerate(term) if ch not in rhs]
            w_out = [i for i, ch in enumerate(term) if ch in rhs and not any(ch in tt for tt, o in zip(terms, operands, strict=True) if o != op)]
            self._record(node.name, op, "linear", w_in, w_out, others[0] if others else None)

    def _view(self, x: str | None, out: str) -> None:
        sx, so = self.shape(x) if x else None, self.shape(out)
        if sx is None or so is None:
            return
        i = j = 0
        while i < len(sx) or j < len(so):
            while i < len(sx) and sx[i] == 1 and not (j < len(so) and so[j] == 1):
                i += 1
            while j < len(so) and so[j] == 1 and not (i < len(sx) and sx[i] == 1):
                j += 1
            if i >= len(sx) or j >= len(so):
                break
            gi, gj = [i], [j]
            pi, pj = sx[i], so[j]
            i += 1
            j += 1
            while pi != pj:
                if pi < pj and i < len(sx):
                    pi *= sx[i]
                    gi.append(i)
                    i += 1
                elif j < len(so):
                    pj *= so[j]
                    gj.append(j)
                    j += 1
                else:
                    return
            gi = [a for a in gi if sx[a] != 1] or gi[:1]
            gj = [b for b in gj if so[b] != 1] or gj[:1]
            if len(gi) == 1 and len(gj) == 1:
                self._u((x, gi[0]), (out, gj[0]))
            else:
                for a in gi:
                    for b in gj:
                        self._link((x, a), (out, b), group=False)
                self.groups.append(([(x, a) for a in gi], [(out, b) for b in gj]))

    def _drop_ones(self, x: str | None, out: str) -> None:
        sx, so = self.shape(x) if x else None, self.shape(out)
        if sx is None or so is None:
            return
        a = [i for i, s in enumerate(sx) if s != 1]
        b = [i for i, s in enumerate(so) if s != 1]
        if len(a) == len(b):
            for i, j in zip(a, b, strict=True):
                self._u((x, i), (out, j))

    def _reduce(self, node: torch.fx.Node) -> None:
        x = self._name(node.args[0])
        sx = self.shape(x) if x else None
        if sx is None:
            return
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dims, int):
            dims = [dims]
        if dims is None or not isinstance(dims, (list, tuple)):
            dims = list(range(len(sx)))
        dims = {int(d) % len(sx) for d in dims if isinstance(d, int)}
        vals = node.meta.get("val")
        targets = [f"{node.name}#{j}" for j in range(len(vals))] if isinstance(vals, (list, tuple)) else [node.name]
        for target in targets:
            st = self.shape(target)
            if st is None:
                continue
            keep = len(st) == len(sx)
            j = 0
            for i in range(len(sx)):
                if i in dims:
                    j += 1 if keep else 0
                    continue
                if j < len(st):
                    self._u((x, i), (target, j))
                j += 1

    def _conv(self, node: torch.fx.Node) -> None:
        t = str(node.target)
        x, w = self._name(node.args[0]), self._name(node.args[1])
        b = self._name(node.args[2]) if len(node.args) > 2 else None
        sx, sw, so = self.shape(x), self.shape(w), self.shape(node.name)
        if None in (sx, sw, so):
            return
        transposed = "transpose" in t or (t == "aten.convolution.default" and bool(node.args[6]))
        groups = 1
        if t == "aten.convolution.default":
            groups = int(node.args[8]) if len(node.args) > 8 else 1
        elif len(node.args) > 6 and isinstance(node.args[6], int) and "transpose" not in t:
            groups = int(node.args[6])
        out_ax, in_ax = (1, 0) if transposed else (0, 1)
        self._u((x, 0), (node.name, 0))
        if groups == 1:
            self._u((x, 1), (w, in_ax))
            self._u((node.name, 1), (w, out_ax))
            w_in, w_out = [in_ax], [out_ax]
        else:
            self._u((node.name, 1), (w, 0))
            if sx[1] == so[1]:
                self._u((x, 1), (node.name, 1))  # depthwise: channels pass through
            else:
                self._link((x, 1), (node.name, 1))
            w_in, w_out = [], [0]
        for i in range(2, len(sx)):
            self._same_size_or_link((x, i), (node.name, i))
            self.fixed_seeds.setdefault((w, i), "kernel")
        if b is not None and self.shape(b):
            self._u((b, 0), (node.name, 1))
        self._record(node.name, w, "linear", w_in, w_out, x)

    # ------------------------------------------------------------------ classes

    def _classify(self, residual_adds: list[str], changed: dict[str, list[int]]) -> None:
        fixed: dict[Key, str] = {}
        for k, why in self.fixed_seeds.items():
            c = self.cls(k)
            prev = fixed.get(c)
            if prev is None or FIXED_KINDS.index(why) < FIXED_KINDS.index(prev):
                fixed[c] = why
        # a dim derived only from fixed dims is fixed (batch x sequence flattened for an MLP)
        grown = True
        while grown:
            grown = False
            for side_a, side_b in self.groups:
                ca, cb = [self.cls(k) for k in side_a], [self.cls(k) for k in side_b]
                for src, dst in ((ca, cb), (cb, ca)):
                    if all(c in fixed for c in src):
                        for c in dst:
                            if c not in fixed:
                                fixed[c] = fixed[src[0]]
                                grown = True
        self.fixed = fixed
        width: dict[Key, str] = {}
        for add in residual_adds:
            for k in self.keys(add):
                c = self.cls(k)
                if fixed.get(c) in (None, "output"):
                    width[c] = "residual stream"
        self.conflicts = {c: fixed[c] for c in width if c in fixed}
        for p, axes in changed.items():
            for pnode, fqn in self.mg.param_of.items():
                if fqn == p:
                    for a in axes:
                        width.setdefault(self.cls((pnode, a)), "changes with width")
        # derived-link graph over classes, for reach and propagation
        nbrs: dict[Key, set[Key]] = {}
        for a, b in self.links:
            ca, cb = self.cls(a), self.cls(b)
            if ca != cb:
                nbrs.setdefault(ca, set()).add(cb)
                nbrs.setdefault(cb, set()).add(ca)
        contracted: set[Key] = set()  # classes read (contracted) by some weight
        produced: list[tuple[set[Key], set[Key]]] = []  # (in classes, out classes) per weight use
        for uses in self.contractions.values():
            for u in uses:
                ins = {self.cls((u.param, a)) for a in u.in_axes}
                outs = {self.cls((u.param, a)) for a in u.out_axes}
                if u.kind == "linear":
                    contracted |= ins
                produced.append((ins, outs))
        if not residual_adds and not changed:
            # no residual stream: width = dims produced by one weight and read by another
            for _ins, outs in produced:
                for c in outs:
                    if c in contracted and c not in fixed:
                        width[c] = "hidden matmul dim (read and written by weights)"

        def reaches(c: Key) -> bool:
            seen, stack = {c}, [c]
            while stack:
                cur = stack.pop()
                if cur in contracted or width.get(cur) == "residual stream":
                    return True
                for nb in nbrs.get(cur, ()):
                    if nb not in seen and nb not in fixed:
                        seen.add(nb)
                        stack.append(nb)
            return False

        changed_any = True
        while changed_any:
            changed_any = False
            for ins, outs in produced:
                if not (ins & width.keys()):
                    continue
                for c in outs:
                    if c in width or c in fixed:
                        continue
                    if reaches(c):
                        width[c] = "fan-out of a width weight"
                        changed_any = True
                    else:
                        self.terminal.add(c)
            for c in list(width):
                for nb in nbrs.get(c, ()):
                    if nb in width or nb in fixed:
                        continue
                    width[nb] = "derived from width (reshape/cat/slice)"
                    changed_any = True
        self.width_classes = width
        # the stream's size, counted over every member axis of its classes (a class's representative may be
        # a size-1 axis that some op lined up with it: torchtitan's Llama read width 1 from one)
        stream = {c for c, why in width.items() if why == "residual stream"}
        sizes: dict[int, int] = {}
        for k in list(self.uf.parent) if stream else ():
            if self.cls(k) in stream:
                s = self.shape(k[0])
                if s is not None and k[1] < len(s) and s[k[1]] != 1:
                    sizes[s[k[1]]] = sizes.get(s[k[1]], 0) + 1
        if sizes:
            self.width = max(sizes, key=sizes.__getitem__)
        else:
            counts: dict[int, int] = {}
            for c in width:
                s = self.shape(c[0])
                if s is not None:
                    counts[s[c[1]]] = counts.get(s[c[1]], 0) + 1
            self.width = max(counts, key=counts.__getitem__) if counts else None

    # ------------------------------------------------------------------ queries

    def is_width(self, key: Key) -> bool:
        grows = self.param_grows.get(key[0])
        if grows is not None:  # a second build at another width says which axes grow: it decides
            return key[1] in grows
        return self.cls(key) in self.width_classes

    def describe(self, key: Key) -> str:
        """A short name for a dim's identity: "width (residual stream)", "vocabulary", ..."""
        c = self.cls(key)
        if self.is_width(key):
            return "width"
        if c in self.fixed:
            return self.fixed[c]
        if c in self.terminal:
            return "terminal"
        return "fixed"

    def width_axes(self, pnode: str) -> list[int]:
        return [k[1] for k in self.keys(pnode) if self.is_width(k)]


def _flat_nodes(a: object) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []

    def visit(x: object) -> None:
        if isinstance(x, torch.fx.Node):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)

    visit(a)
    return out
