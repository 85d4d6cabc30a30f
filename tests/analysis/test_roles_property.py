"""Issue 13 property: random small architectures get the roles an oracle reads off how they were built.

The oracle never looks at fxparam's analysis: the builder below records, while it builds, which
parameter is an input table / input projection / hidden matrix / readout / vector, where the
readout multiplier alpha_out/m_d must go, and the width.  Drawn: width, vocabulary (equal to
the width included), depth, the block container (ModuleList, ModuleDict, attributes), MLP
ratio, biases, a constant branch multiplier, the input (embedding, factorised embedding,
float features) and the readout (nn.Linear, module-tied, functional tied ``F.linear(h,
wte.weight)``, functional ``F.linear(h, self.w_out)``).
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fxparam


class Block(nn.Module):
    def __init__(self, d, ratio, bias, branch_mult):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, ratio * d, bias=bias)
        self.proj = nn.Linear(ratio * d, d, bias=bias)
        self.branch_mult = branch_mult

    def forward(self, x):
        return x + self.branch_mult * self.proj(F.gelu(self.fc(self.ln(x))))


class Random(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, v = a["width"], a["vocab"]
        self.a = a
        self.oracle = {}
        if a["input"] == "features":
            self.inp = nn.Linear(a["features"], d)
            self.oracle["inp.weight"] = "embedding"
        else:
            e = a["factor"] if a["input"] == "factorised" else d
            self.wte = nn.Embedding(v, e)
            self.oracle["wte.weight"] = "embedding"
            if a["input"] == "factorised":
                self.up = nn.Linear(e, d, bias=False)
                self.oracle["up.weight"] = "embedding"  # fan-in e is fixed: input-weight rules
        blocks = [Block(d, a["ratio"], a["bias"], a["branch_mult"]) for _ in range(a["depth"])]
        if a["container"] == "list":
            self.blocks = nn.ModuleList(blocks)
            names = [f"blocks.{i}" for i in range(a["depth"])]
        elif a["container"] == "dict":
            self.blocks = nn.ModuleDict({f"b{i}": b for i, b in enumerate(blocks)})
            names = [f"blocks.b{i}" for i in range(a["depth"])]
        else:
            for i, b in enumerate(blocks):
                setattr(self, f"block{i}", b)
            names = [f"block{i}" for i in range(a["depth"])]
        self.block_names = names
        for n in names:
            self.oracle[f"{n}.fc.weight"] = self.oracle[f"{n}.proj.weight"] = "hidden"
        self.ln_f = nn.LayerNorm(d)
        readout = a["readout"]
        if readout == "tied_functional" and a["input"] != "embedding":
            readout = "linear"
        self.readout = readout
        self.multiplier_at = {"linear": ("head.weight", "input:head"), "tied_module": ("head.weight", "input:head"),
                              "tied_functional": ("wte.weight", "ln_f"), "param": ("w_out", "ln_f")}[readout]
        if readout in ("linear", "tied_module"):
            self.head = nn.Linear(d, v, bias=False)
            self.oracle["head.weight"] = "readout"
            if readout == "tied_module" and a["input"] == "embedding":
                self.head.weight = self.wte.weight
                self.multiplier_at = ("head.weight", "input:head")
        elif readout == "param":
            self.w_out = nn.Parameter(torch.randn(v, d) * 0.02)
            self.oracle["w_out"] = "readout"
        for name, p in self.named_parameters():
            if p.dim() == 1:
                self.oracle[name] = "vector"

    def forward(self, x):
        if self.a["input"] == "features":
            x = self.inp(x)
        else:
            x = self.wte(x)
            if self.a["input"] == "factorised":
                x = self.up(x)
        for n in self.block_names:  # registered submodules (a plain list would escape the meta capture)
            x = self.get_submodule(n)(x)
        h = self.ln_f(x)
        if self.readout == "tied_functional":
            return F.linear(h, self.wte.weight)
        if self.readout == "param":
            return F.linear(h, self.w_out)
        return self.head(h)

    def example(self):
        if self.a["input"] == "features":
            return torch.zeros(2, 4, self.a["features"])
        return torch.zeros(2, 4, dtype=torch.long)


ARCH = st.fixed_dictionaries({
    "width": st.sampled_from([32, 48, 64]),
    "vocab_kind": st.sampled_from(["equal", "small", "large"]),
    "depth": st.integers(1, 3),
    "container": st.sampled_from(["list", "dict", "attrs"]),
    "ratio": st.sampled_from([1, 2, 4]),
    "bias": st.booleans(),
    "branch_mult": st.sampled_from([1.0, 0.5]),
    "input": st.sampled_from(["embedding", "factorised", "features"]),
    "factor": st.sampled_from([8, 32]),
    "features": st.sampled_from([8, 32]),
    "readout": st.sampled_from(["linear", "tied_module", "tied_functional", "param"]),
})


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
          phases=[Phase.explicit, Phase.generate])  # no shrinking: each example is a capture
@given(ARCH)
def test_random_architectures_match_the_oracle(a):
    a = dict(a, vocab={"equal": a["width"], "small": 17, "large": 2 * a["width"]}[a["vocab_kind"]])
    model = Random(a)
    an = fxparam.inspect(model, model.example())
    assert an.width == a["width"]
    got = {n: p.role for n, p in an.params.items() if not p.tied_to}
    want = {n: r for n, r in model.oracle.items() if n in got}
    assert got == want
    owner, site = model.multiplier_at
    assert an.params[owner].multiplier_at == site
    p = fxparam.plan(model, "mup", example_inputs=model.example(), base_width=16)
    assert p.multipliers[site] == pytest.approx(fxparam.MuP(base_width=16).output_multiplier * 16 / a["width"])
