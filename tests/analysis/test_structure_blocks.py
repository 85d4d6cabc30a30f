"""Issue 13, cases 5-7: blocks and depth on any container, branch-only depth scaling.

Every expected value comes from how the test model was built (the number of blocks
constructed or applied, the branch formula written out by hand), never from fxparam's
own analysis.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import fxparam
from fxparam.configs import CompleteP, DepthScaled
from fxparam.errors import AnalysisError

D, V, T = 32, 50, 8
IDS = torch.arange(2 * T).reshape(2, T) % V


class Mlp(nn.Module):
    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class Block(nn.Module):
    """Pre-norm block with two residual branches ("attention" stand-in and MLP).

    ``kind`` selects how the branch is multiplied inside the block before the add:
    none, a constant (``x + 0.5 * f(ln x)``), a LayerScale gain (``x + gamma * f(ln x)``)
    or the model's own residual multiplier attribute.
    """

    def __init__(self, d: int = D, kind: str = "plain") -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mix, self.mlp = nn.Linear(d, d), Mlp(d)
        self.kind = kind
        if kind == "layerscale":
            self.gamma1 = nn.Parameter(torch.full((d,), 0.7))
            self.gamma2 = nn.Parameter(torch.full((d,), 0.7))
        self.res_mult = 0.3

    def _gain(self, i: int) -> torch.Tensor | float:
        if self.kind == "const":
            return 0.5
        if self.kind == "layerscale":
            return self.gamma1 if i == 1 else self.gamma2
        if self.kind == "own":
            return self.res_mult
        return 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._gain(1) * self.mix(self.ln1(x))
        return x + self._gain(2) * self.mlp(self.ln2(x))


class LM(nn.Module):
    """Embedding -> blocks held by ``container`` -> norm -> readout."""

    def __init__(self, n: int, container: str = "list", kind: str = "plain", shared_applications: int = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.container = container
        self.shared_applications = shared_applications
        if container == "list":
            self.blocks = nn.ModuleList([Block(kind=kind) for _ in range(n)])
        elif container == "dict":
            self.blocks = nn.ModuleDict({f"layer_{chr(97 + i)}": Block(kind=kind) for i in range(n)})
        elif container == "attrs":
            for i in range(n):
                setattr(self, f"block{i}", Block(kind=kind))
        elif container == "shared":
            self.block = Block(kind=kind)
        self.n = n
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, V)

    def block_calls(self) -> list[nn.Module]:
        if self.container == "list":
            return list(self.blocks)
        if self.container == "dict":
            return list(self.blocks.values())
        if self.container == "attrs":
            return [getattr(self, f"block{i}") for i in range(self.n)]
        return [self.block] * self.shared_applications

    def stream(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for blk in self.block_calls():
            x = blk(x)
        return x

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(self.stream(idx)))


def _inspect(model: nn.Module):
    return fxparam.inspect(model, example_inputs=(IDS,))


# ------------------------------------------------------------------ case 5: containers


@pytest.mark.parametrize(("container", "n"), [("dict", 2), ("attrs", 3), ("list", 3), ("list", 1), ("attrs", 1)])
def test_depth_counts_blocks_on_any_container(container, n):
    a = _inspect(LM(n, container))
    names = {"dict": [f"blocks.layer_{chr(97 + i)}" for i in range(n)],
             "attrs": [f"block{i}" for i in range(n)],
             "list": [f"blocks.{i}" for i in range(n)]}[container]
    assert a.depth == n and a.stream_depths == [n]
    assert sorted(a.blocks) == sorted(names)
    assert len(a.residuals) == 2 * n  # two branches per block, never counted as blocks
    # the depth multiplier lands on the branch's last matmul, inside the block
    outs = sorted(m for r in a.residuals for m in r.output_modules)
    assert outs == sorted([f"{b}.mix" for b in names] + [f"{b}.mlp.down" for b in names])


@pytest.mark.parametrize(("container", "n"), [("dict", 2), ("attrs", 3)])
def test_completep_branch_multiplier_is_one_over_built_depth(container, n):
    plan = fxparam.plan(LM(n, container), CompleteP(base_width=D, base_depth=1), example_inputs=(IDS,))
    assert plan.depth == n and plan.m_L == pytest.approx(n)
    branch = {k: v for k, v in plan.multipliers.items() if k.endswith((".mix", ".down"))}
    assert len(branch) == 2 * n
    assert all(v == pytest.approx(1.0 / n) for v in branch.values())


# ------------------------------------------------------------------ case 6: one block applied n times


def test_shared_block_applied_four_times_is_depth_four():
    a = _inspect(LM(1, "shared", shared_applications=4))
    assert a.depth == 4 and a.blocks == ["block"]
    assert sorted(r.application for r in a.residuals) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_shared_block_branch_scaled_once_per_application():
    torch.manual_seed(0)
    model = LM(1, "shared", shared_applications=4)
    reference, for_graph = copy.deepcopy(model), copy.deepcopy(model)
    plan = fxparam.plan(model, DepthScaled(base_depth=1), example_inputs=(IDS,))
    # 1/m_L once (m_L = 4/1), not compounded over the four applications (0.25**4)
    assert plan.multipliers == {"block.mix": pytest.approx(0.25), "block.mlp.down": pytest.approx(0.25)}
    fxparam.apply_plan(model, plan, example_inputs=(IDS,))
    # brute force: x <- x + f(x)/4 per application, with the same weights
    blk = reference.block
    with torch.no_grad():
        x = reference.emb(IDS)
        for _ in range(4):
            x = x + 0.25 * blk.mix(blk.ln1(x))
            x = x + 0.25 * blk.mlp(blk.ln2(x))
        want = reference.head(reference.ln_f(x))
        torch.testing.assert_close(model(IDS), want)
        assert not torch.allclose(reference(IDS), want)  # the multiplier does change the model
        # the graph lowering scales every call of the module once, too
        graph = fxparam.apply_plan(for_graph, plan, lowering="graph", example_inputs=(IDS,))
        torch.testing.assert_close(graph(IDS), want)


# ------------------------------------------------------------------ case 7: branch-only scaling


@pytest.mark.parametrize("kind", ["const", "layerscale", "own"])
def test_in_block_branch_multiplier_keeps_the_skip(kind):
    a = _inspect(LM(2, "list", kind=kind))
    assert a.depth == 2
    for r in a.residuals:
        assert r.output_modules and all(m.endswith((".mix", ".mlp.down")) for m in r.output_modules), r
        assert r.block not in r.output_modules  # never the whole block (skip included)


def _manual_stream(model: LM, factor: float) -> torch.Tensor:
    """x + factor * gain * f(ln x) per branch, written out with the model's weights."""
    x = model.emb(IDS)
    for blk in model.block_calls():
        x = x + factor * blk._gain(1) * blk.mix(blk.ln1(x))
        x = x + factor * blk._gain(2) * blk.mlp(blk.ln2(x))
    return x


def _rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("kind", ["const", "layerscale", "own"])
def test_depth_24_residual_stream_keeps_its_scale(kind):
    """CompleteP at depth 24 (base 2): only the branch contribution is scaled by 1/12."""
    torch.manual_seed(0)
    model = LM(24, "list", kind=kind)
    reference = copy.deepcopy(model)
    broken = copy.deepcopy(model)
    plan = fxparam.plan(model, CompleteP(base_width=D, base_depth=2), example_inputs=(IDS,))
    fxparam.apply_plan(model, plan, example_inputs=(IDS,))
    with torch.no_grad():
        want = _manual_stream(reference, 1.0 / 12)
        torch.testing.assert_close(model.stream(IDS), want)
        emb = _rms(reference.emb(IDS))
        assert 0.5 * emb < _rms(model.stream(IDS)) < 4 * emb
        # logits still depend on the input
        other = (IDS + 1) % V
        assert (model(IDS) - model(other)).abs().max() > 1e-3
        # negative control: the multiplier on the whole block (skip included) shrinks the skip path
        # by 12**-24: the stream keeps only the last branches' small contribution
        for blk in broken.blocks:
            blk.register_forward_hook(lambda m, i, o: o / 12)
        assert _rms(broken.stream(IDS)) < 0.1 * emb


def test_inline_branch_is_refused_loudly():
    class Inline(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, D)
            self.w = nn.ParameterList([nn.Parameter(torch.randn(D, D) / D**0.5) for _ in range(2)])
            self.head = nn.Linear(D, V)

        def forward(self, idx):
            x = self.emb(idx)
            for w in self.w:
                x = x + torch.tanh(x @ w)  # the branch's last op belongs to no submodule
            return self.head(x)

    with pytest.raises(AnalysisError, match="inline"):
        fxparam.plan(Inline(), DepthScaled(base_depth=1), example_inputs=(IDS,))


# ------------------------------------------------------------------ sub-layers vs hybrids


class SubAttn(nn.Module):  # a sub-layer that adds its own residual (T5LayerSelfAttention style)
    def __init__(self) -> None:
        super().__init__()
        self.ln, self.o = nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.o(self.ln(x))


class SubFF(nn.Module):  # T5LayerFF style
    def __init__(self) -> None:
        super().__init__()
        self.ln, self.mlp = nn.LayerNorm(D), Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln(x))


class SubLayerBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([SubAttn(), SubFF()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for sub in self.layer:
            x = sub(x)
        return x


class Stack(nn.Module):
    """Embedding in the root, the blocks inside ``encoder`` (which does not hold the stream's start)."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.encoder = nn.Sequential(*blocks)
        self.head = nn.Linear(D, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(idx)))


@pytest.mark.parametrize("n", [1, 2])
def test_one_block_per_call_inside_a_stack_module(n):
    a = _inspect(Stack([Block() for _ in range(n)]))
    assert a.depth == n and a.blocks == [f"encoder.{i}" for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_sub_layers_with_their_own_adds_are_not_blocks(n):
    a = _inspect(Stack([SubLayerBlock() for _ in range(n)]))
    assert a.depth == n and a.blocks == [f"encoder.{i}" for i in range(n)]
    assert len(a.residuals) == 2 * n


def test_hybrid_stack_of_alternating_block_classes_counts_each_block():
    a = _inspect(Stack([SubAttn(), SubFF(), SubAttn(), SubFF()]))  # e.g. attention / SSM hybrids
    assert a.depth == 4 and a.blocks == [f"encoder.{i}" for i in range(4)]


@pytest.mark.parametrize(("container", "kind", "n"), [("dict", "const", 2), ("attrs", "layerscale", 3),
                                                      ("shared", "own", 4)])
def test_completep_at_base_width_and_depth_is_the_identity(container, kind, n):
    torch.manual_seed(0)
    model = LM(1 if container == "shared" else n, container, kind=kind, shared_applications=n)
    reference = copy.deepcopy(model)
    plan = fxparam.plan(model, CompleteP(base_width=D, base_depth=n), example_inputs=(IDS,))
    assert plan.m_L == pytest.approx(1.0) and plan.m_d == pytest.approx(1.0)
    fxparam.apply_plan(model, plan, example_inputs=(IDS,))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), reference(IDS))


def test_branch_module_also_called_outside_the_branches_is_refused_loudly():
    class SharedOut(nn.Module):
        """Every block's branch ends in ``out``, which the head path calls once more."""

        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, D)
            self.ups = nn.ModuleList([nn.Linear(D, D) for _ in range(2)])
            self.out = nn.Linear(D, D)
            self.head = nn.Linear(D, V)

        def forward(self, idx):
            x = self.emb(idx)
            for up in self.ups:
                x = x + self.out(torch.relu(up(x)))
            return self.head(self.out(x))  # a multiplier on `out` would scale this call as well

    a = _inspect(SharedOut())
    assert a.depth == 2 and all(not r.output_modules and "also called outside" in r.unscalable for r in a.residuals)
    with pytest.raises(AnalysisError, match="'out'.*also called outside"):
        fxparam.plan(SharedOut(), DepthScaled(base_depth=1), example_inputs=(IDS,))
