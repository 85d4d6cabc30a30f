"""The captured ATen graph as a networkx DiGraph of activation nodes.

Why networkx: the structural questions (is the skip an ancestor of the branch? which
nodes lie between them?) are reachability queries, and networkx answers them in a
few readable lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch

from fxparam.capture import Capture, iter_module_stack

#: Ops whose second operand is a weight used as ``x @ W^T`` (torch Linear layout [out, in]).
LINEAR_OPS = {"aten.linear.default"}
#: Ops computing ``x @ W`` with W laid out [in, out] (HF Conv1D, plain matmuls).
MATMUL_OPS = {"aten.mm.default", "aten.matmul.default", "aten.addmm.default", "aten.bmm.default"}
EMBEDDING_OPS = {"aten.embedding.default", "aten.index_select.default"}
#: Shape-only ops a weight may pass through on its way to a matmul.
WEIGHT_VIEW_OPS = {
    "aten.t.default": True,  # flips layout
    "aten.transpose.int": True,
    "aten.permute.default": True,
    "aten.view.default": False,
    "aten.reshape.default": False,
    "aten.to.dtype": False,
    "aten.to.dtype_layout": False,
    "aten._to_copy.default": False,
    "aten.contiguous.default": False,
    "aten.clone.default": False,
    "aten.alias.default": False,
    "aten.detach.default": False,
    "aten.type_as.default": False,
}
ADD_OPS = {"aten.add.Tensor", "aten.add_.Tensor"}
LAYER_NORM_OPS = {"aten.layer_norm.default", "aten.native_layer_norm.default"}
RMS_NORM_OPS = {"aten.rms_norm.default", "aten._fused_rms_norm.default"}
SDPA_OPS = {
    "aten.scaled_dot_product_attention.default",
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
    "aten._scaled_dot_product_efficient_attention.default",
    "aten._scaled_dot_product_flash_attention.default",
}
SOFTMAX_OPS = {"aten._softmax.default", "aten.softmax.int", "aten._safe_softmax.default"}


@dataclass
class ModelGraph:
    """Activation graph with module ownership and parameter uses.

    Attributes:
        g: DiGraph over fx node names (edges = data flow).
        nodes: fx nodes by name.
        owner: innermost owning module FQN of each node ("" for the root).
        stack: owning module FQNs of each node, outermost first.
        param_of: placeholder node name -> parameter FQN.
        outputs: names of nodes returned by the model.
        user_inputs: names of user-input placeholders.
    """

    capture: Capture
    g: nx.DiGraph
    nodes: dict[str, torch.fx.Node]
    owner: dict[str, str]
    stack: dict[str, list[str]]
    param_of: dict[str, str]
    outputs: set[str]
    user_inputs: set[str]
    order: dict[str, int] = field(default_factory=dict)

    def target(self, name: str) -> str:
        return str(self.nodes[name].target)

    def shape(self, name: str) -> tuple[int, ...] | None:
        val = self.nodes[name].meta.get("val")
        if isinstance(val, torch.Tensor):
            return tuple(int(s) for s in val.shape)
        return None

    def tensor_args(self, name: str) -> list[str]:
        """Names of the node's direct tensor inputs, in argument order."""
        out: list[str] = []

        def visit(a: object) -> None:
            if isinstance(a, torch.fx.Node):
                out.append(a.name)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    visit(x)

        node = self.nodes[name]
        for a in node.args:
            visit(a)
        for a in node.kwargs.values():
            visit(a)
        return out

    def is_param(self, name: str) -> bool:
        return name in self.param_of


def build_graph(capture: Capture) -> ModelGraph:
    """Turn a Capture into a ModelGraph (pure; the capture is not modified)."""
    g = nx.DiGraph()
    nodes: dict[str, torch.fx.Node] = {}
    owner: dict[str, str] = {}
    stack: dict[str, list[str]] = {}
    outputs: set[str] = set()
    order: dict[str, int] = {}
    for i, node in enumerate(capture.graph.nodes):
        nodes[node.name] = node
        order[node.name] = i
        if node.op == "output":
            for a in torch.fx.node.map_arg(node.args, lambda n: n).__iter__():
                _collect(a, outputs)
            continue
        g.add_node(node.name)
        path = [p for p in iter_module_stack(node) if p]
        stack[node.name] = path
        owner[node.name] = path[-1] if path else ""
        for inp in node.all_input_nodes:
            g.add_edge(inp.name, node.name)
    return ModelGraph(
        capture=capture,
        g=g,
        nodes=nodes,
        owner=owner,
        stack=stack,
        param_of=dict(capture.node_param),
        outputs=outputs,
        user_inputs=set(capture.user_inputs),
        order=order,
    )


def _collect(a: object, into: set[str]) -> None:
    if isinstance(a, torch.fx.Node):
        into.add(a.name)
    elif isinstance(a, (list, tuple)):
        for x in a:
            _collect(x, into)
    elif isinstance(a, dict):
        for x in a.values():
            _collect(x, into)
