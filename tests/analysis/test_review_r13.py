"""Review R13 of issue 13: inputs of the issue's kinds that it did not list.

Expected values come from first principles (an override that names no parameter must be
loud; Tensor Programs V Table 3 roles), never from fxparam's own output.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxparam
from fxparam.errors import ConfigError

IDS = (torch.zeros(2, 8, dtype=torch.long),)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.proj(F.gelu(self.fc(self.ln(x))))


class MatmulTiedLM(nn.Module):
    """Tied readout written as ``h @ wte.weight.T`` (or einsum): no lm_head module, no F.linear."""

    def __init__(self, vocab=50, width=64, einsum=False):
        super().__init__()
        self.einsum = einsum
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(2)])
        self.ln_f = nn.LayerNorm(width)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        h = self.ln_f(x)
        if self.einsum:
            return torch.einsum("btd,vd->btv", h, self.wte.weight)
        return h @ self.wte.weight.T


@pytest.mark.parametrize(
    "roles, match",
    [
        ({"blocks.0.fc.weigth": "hidden"}, r"blocks\.0\.fc\.weight"),  # typo: the close FQN is named
        ({"blocks.0.fc": "hidden"}, r"blocks\.0\.fc\.weight"),  # a module, not a parameter: its params named
        ({"re:^no_such_layer": "readout"}, "matches no parameter"),
        ({"re:blocks.(": "hidden"}, "regular expression"),
        ({"no.such.param": "bogus"}, "choose one of"),
    ],
)
def test_override_that_applies_to_nothing_is_refused(roles, match):
    # before: an unmatched key was ignored silently and the analysis's role kept
    for call in (
        lambda: fxparam.inspect(MatmulTiedLM(), IDS, roles=roles),
        lambda: fxparam.plan(MatmulTiedLM(), fxparam.MuP(base_width=32), example_inputs=IDS, roles=roles),
    ):
        with pytest.raises(ConfigError, match=match):
            call()


def test_override_that_matches_still_applies():  # control for the refusal above
    a = fxparam.inspect(
        MatmulTiedLM(), IDS, roles={"blocks.0.fc.weight": "vector", r"re:^blocks\.1\.fc\.": "frozen"}
    )
    assert a.params["blocks.0.fc.weight"].role == "vector"
    assert a.params["blocks.1.fc.bias"].role == "frozen"
    assert a.params["blocks.1.proj.weight"].role == "hidden"


@pytest.mark.parametrize("einsum", [False, True])
def test_tied_readout_by_matmul_or_einsum(einsum):
    # muP readout multiplier alpha_out/m_d = 1/(64/32) on the tied readout's input (TP5 Table 3)
    m = MatmulTiedLM(einsum=einsum)
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        ref = m(ids)
    mup = fxparam.MuP(base_width=32)
    fxparam.transform(m, mup, example_inputs=(ids,), init=False)
    with torch.no_grad():
        got = m(ids)
    torch.testing.assert_close(got, ref * mup.output_multiplier / 2)


class FactorisedHeadLM(nn.Module):
    """A factorised readout Linear(d, 16) -> Linear(16, vocab): the 16 is a fixed bottleneck."""

    def __init__(self, vocab=50, width=64):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(2)])
        self.ln_f = nn.LayerNorm(width)
        self.h1 = nn.Linear(width, 16)
        self.h2 = nn.Linear(16, vocab)

    def forward(self, idx):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.h2(self.h1(self.ln_f(x)))


def test_factorised_head_gets_one_readout_multiplier():
    # with a second build (the width-16 axis does not grow): h1 (width -> 16) is the readout and carries
    # alpha_out/m_d once; h2 (16 -> vocab) has a fixed fan-in: no second multiplier (was x(1/m_d)^2 on the
    # logits), no width factor on its LR (TP5 Table 3)
    mup = fxparam.MuP(base_width=32)
    with pytest.warns(UserWarning):  # the build overrules the dimension analysis on h1/h2: said loudly
        p = fxparam.plan(
            FactorisedHeadLM(), mup, example_inputs=IDS, rebuild=lambda w: FactorisedHeadLM(width=w)
        )
    m_d = 64 / 32
    assert p.params["h1.weight"].role == "readout"
    assert p.input_multipliers == {"h1": pytest.approx(mup.output_multiplier / m_d)}
    assert p.output_multipliers == {}
    assert p.params["h2.weight"].role != "readout"
    assert p.params["h2.weight"].lr_mult == 1.0 and p.params["h2.weight"].sgd_lr_mult == 1.0


class _Blk(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.ln(x))


class _Stages(nn.Module):
    """Blocks in stages: ``ModuleDict{name: Sequential(Blk x count)}`` (depth = sum of counts, by construction)."""

    def __init__(self, counts: tuple[int, ...], d: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, d)
        self.stages = nn.ModuleDict({f"s{i}": nn.Sequential(*[_Blk(d) for _ in range(c)]) for i, c in enumerate(counts)})
        self.head = nn.Linear(d, 50)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for stage in self.stages.values():
            x = stage(x)
        return self.head(x)


@pytest.mark.parametrize("counts", [(2, 1), (1, 3), (3, 1, 2)])
def test_unequal_stages_of_blocks_count_every_block(counts: tuple[int, ...]) -> None:
    idx = torch.zeros(2, 5, dtype=torch.long)
    analysis = fxparam.inspect(_Stages(counts), example_inputs=(idx,))
    assert analysis.depth == sum(counts)  # not the number of stages
    assert len({r.block for r in analysis.residuals}) == sum(counts)


def test_equal_stages_are_ambiguous_and_loud() -> None:
    """Two stages of two blocks look exactly like two blocks of two same-class sub-layers (MLP-Mixer): the
    count stays in stages (2) but a warning names both readings (2 vs 4) and the base_depth units."""
    idx = torch.zeros(2, 5, dtype=torch.long)
    with pytest.warns(UserWarning, match=r"depth is 4, not 2"):
        analysis = fxparam.inspect(_Stages((2, 2)), example_inputs=(idx,))
    assert analysis.depth == 2 and any("depth is 4" in n for n in analysis.notes)


class _FactorisedHead(nn.Module):
    """Embedding -> hidden block -> Linear(d, 16) -> Linear(16, vocab): the 16 is fixed by construction."""

    def __init__(self, d: int = 64, vocab: int = 50) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, d)
        self.h1 = nn.Linear(d, 16)
        self.h2 = nn.Linear(16, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        x = x + self.fc(x)
        return self.h2(self.h1(x))


def test_factorised_head_without_a_second_build_is_loud() -> None:
    """One capture cannot tell the fixed 16 from a width-derived dim: warn, naming rebuild= and roles=."""
    from fxparam.analysis.roles import UnclassifiedWarning

    idx = torch.zeros(2, 5, dtype=torch.long)
    with pytest.warns(UnclassifiedWarning, match=r"'h2.weight' reads a 16-dim input.*rebuild="):
        fxparam.inspect(_FactorisedHead(), example_inputs=(idx,))


def test_factorised_head_with_a_second_build_is_quiet() -> None:
    import warnings

    idx = torch.zeros(2, 5, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis = fxparam.inspect(_FactorisedHead(), example_inputs=(idx,), rebuild=lambda width: _FactorisedHead(d=width))
    assert not [w for w in caught if "reads a 16-dim input" in str(w.message)]
    assert analysis.params["h1.weight"].role == "readout"  # the second build tells: fixed 16
