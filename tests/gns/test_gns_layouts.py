"""GNS on any activation layout and with norms used several times per forward (issue 15).

Truth in every test: per-example gradients from one-example backward passes of an *unswapped*
copy (plain torch norm modules), computed here; never from fxparam's estimator.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _gns_helpers import brute_force_estimates
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxparam.errors import GNSError
from fxparam.gns import monitor, swap_norms, unswap_norms
from fxparam.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def one_example_grads(
    model: nn.Module, xs: list[torch.Tensor], loss_fn, names: list[str]
) -> dict[str, torch.Tensor]:
    """``{param: (B, *shape)}``: gradient of each example's own loss, one backward per example."""
    plain = copy.deepcopy(model)
    unswap_norms(plain)
    params = dict(plain.named_parameters())
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for x in xs:
        plain.zero_grad()
        loss_fn(plain, x).backward()
        for n in names:
            out[n].append(params[n].grad.detach().clone())
    return {n: torch.stack(v) for n, v in out.items()}


def check_against_truth(model, mon, per, batch: int) -> None:
    est = mon.update()
    names = mon.tracked_parameters
    assert est.total.batch_size == batch
    assert all(layer.batch_size == batch for layer in est.layers.values())
    g2, tr, s_small, s_big = brute_force_estimates(per, names)
    assert math.isclose(est.total.s_small, s_small, rel_tol=1e-4)
    assert math.isclose(est.total.s_big, s_big, rel_tol=1e-4)
    assert math.isclose(est.total.trace_sigma_raw, tr, rel_tol=1e-3)
    assert math.isclose(est.total.g2_raw, g2, rel_tol=1e-3, abs_tol=1e-3 * s_big)


# --------------------------------------------------------------------------- case 1: shared block


def shared_block_gpt(norm: str = "layernorm") -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(width=32, depth=3, head_dim=16, vocab=64, seq_len=16, norm=norm))  # type: ignore[arg-type]
    block = model.blocks[0]
    model.blocks = nn.ModuleList([block, block, block])  # one block (and its two norms) applied 3 times
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _lm_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    logits = model(idx[:, :-1])
    per_tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1), reduction="none")
    return per_tok.view(idx.shape[0], -1).mean(1).mean()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_case1_norm_used_three_times_per_forward(norm):
    """Issue 15 case 1: a block shared across depth, 6 examples: n = 6 and the norm of the per-use sum."""
    model = shared_block_gpt(norm)
    swap_norms(model)
    mon = monitor(model)
    assert mon.tracked_modules == ["blocks.0.ln_1", "blocks.0.ln_2", "ln_f"]
    idx = torch.randint(0, 64, (6, 10), generator=torch.Generator().manual_seed(3))
    _lm_loss(model, idx).backward()
    per = one_example_grads(model, [idx[b : b + 1] for b in range(6)], _lm_loss, mon.tracked_parameters)
    got = mon.per_example_sq_norms()
    for name in mon.tracked_parameters:
        torch.testing.assert_close(
            got[name], per[name].flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-10, msg=name
        )
    check_against_truth(model, mon, per, batch=6)


def test_case1_negative_control_per_call_norms_differ():
    """Summing per-call squared norms (the old accumulator) is not the truth on the shared block."""
    model = shared_block_gpt()
    idx = torch.randint(0, 64, (6, 10), generator=torch.Generator().manual_seed(3))
    names = ["blocks.0.ln_1.weight"]
    per = one_example_grads(model, [idx[b : b + 1] for b in range(6)], _lm_loss, names)
    truth = per[names[0]].flatten(1).pow(2).sum(1)
    # Each use's own per-example gradient v_u[b] = B * sum_t dy * x_hat (dy carries 1/B of the mean loss).
    plain = copy.deepcopy(model)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    ln = plain.blocks[0].ln_1

    def keep_grad(_m, a, y):
        y.register_hook(lambda g: calls.append((g, a[0].detach())))

    ln.register_forward_hook(keep_grad)
    _lm_loss(plain, idx).backward()
    uses = [6 * (g * F.layer_norm(x, (32,), None, None, ln.eps)).sum(1) for g, x in calls]
    assert len(uses) == 3
    torch.testing.assert_close(sum(uses).pow(2).sum(-1), truth, rtol=1e-4, atol=1e-10)  # the hooks are right
    per_call = sum(u.pow(2).sum(-1) for u in uses)  # squared per use, then summed: not the truth
    assert not torch.allclose(per_call, truth, rtol=1e-2)


# --------------------------------------------------------------------------- case 2: (seq, batch, hidden)


class SeqFirstEncoder(nn.Module):
    """``nn.TransformerEncoderLayer`` with its default (sequence, batch, hidden) layout and a readout."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(width, 2, 64, dropout=0.0)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, B, H) -> per-example losses (B,)
        return self.head(self.layer(x)).squeeze(-1).pow(2).mean(0)


def _seq_first_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).mean()


def test_case2_sequence_first_layout():
    """Issue 15 case 2: (sequence, batch, hidden), 4 sequences of 7 tokens: n = 4, exact per-example norms."""
    torch.manual_seed(0)
    model = SeqFirstEncoder()
    swap_norms(model)
    mon = monitor(model)
    x = torch.randn(7, 4, 32, generator=torch.Generator().manual_seed(5))
    _seq_first_loss(model, x).backward()
    assert {m.example_layout.dim for m in (model.layer.norm1, model.layer.norm2)} == {1}
    per = one_example_grads(
        model, [x[:, b : b + 1] for b in range(4)], _seq_first_loss, mon.tracked_parameters
    )
    got = mon.per_example_sq_norms()
    for name in mon.tracked_parameters:
        torch.testing.assert_close(
            got[name], per[name].flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-10, msg=name
        )
    check_against_truth(model, mon, per, batch=4)


def test_case2_negative_control_wrong_batch_dim():
    """Forcing the leading dim (what was assumed before) reports 7 'examples' and a wrong S_small."""
    torch.manual_seed(0)
    model = SeqFirstEncoder()
    swap_norms(model, batch_dim=0)
    mon = monitor(model)
    x = torch.randn(7, 4, 32, generator=torch.Generator().manual_seed(5))
    _seq_first_loss(model, x).backward()
    per = one_example_grads(
        model, [x[:, b : b + 1] for b in range(4)], _seq_first_loss, mon.tracked_parameters
    )
    est = mon.update()
    _, _, s_small, _ = brute_force_estimates(per, mon.tracked_parameters)
    assert est.total.batch_size == 7
    assert not math.isclose(est.total.s_small, s_small, rel_tol=1e-2)


# --------------------------------------------------------------------------- property over layouts


class LayoutModel(nn.Module):
    """Token model whose norm sees (B, T, H), (T, B, H) or flattened (B*T, H); the norm is used ``reuse`` times."""

    def __init__(self, layout: str, reuse: int, kind: str, bias: bool, width: int = 16) -> None:
        super().__init__()
        self.layout, self.reuse = layout, reuse
        self.inp = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, bias=bias) if kind == "layernorm" else nn.RMSNorm(width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            self.norm.weight.add_(0.3 * torch.randn(width))
            if getattr(self.norm, "bias", None) is not None:
                self.norm.bias.add_(0.3 * torch.randn(width))

    def _norm(self, h: torch.Tensor) -> torch.Tensor:  # h: (B, T, H) -> same, through the norm's layout
        B, T, H = h.shape
        if self.layout == "batch_first":
            return self.norm(h)
        if self.layout == "seq_first":
            return self.norm(h.transpose(0, 1).contiguous()).transpose(0, 1)
        return self.norm(h.reshape(B * T, H)).view(B, T, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x in the layout; per-example losses (B,)
        h = x.transpose(0, 1) if self.layout == "seq_first" else x
        h = self.inp(h)
        for _ in range(self.reuse):
            z = self._norm(h).unsqueeze(1)
            h = h + self.mix(F.scaled_dot_product_attention(z, z, z, is_causal=True).squeeze(1))
        return self.head(self._norm(h)).squeeze(-1).pow(2).mean(1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(["batch_first", "seq_first", "flat"]),
    reuse=st.integers(1, 3),
    kind=st.sampled_from(["layernorm", "rmsnorm"]),
    bias=st.booleans(),
    B=st.integers(2, 4),
    T=st.integers(2, 5),
)
def test_property_layouts_reuse_norm_kinds(layout, reuse, kind, bias, B, T):
    torch.manual_seed(1)
    model = LayoutModel(layout, reuse, kind, bias)
    swap_norms(model)
    mon = monitor(model)
    x = torch.randn(B, T, 16)
    xin = x.transpose(0, 1).contiguous() if layout == "seq_first" else x
    model(xin).mean().backward()
    ex = [x[b : b + 1] for b in range(B)]
    xs = [e.transpose(0, 1).contiguous() for e in ex] if layout == "seq_first" else ex
    per = one_example_grads(model, xs, lambda m, xx: m(xx).mean(), mon.tracked_parameters)
    lay = model.norm.example_layout
    assert (lay.dim, lay.flat) == {"batch_first": (0, False), "seq_first": (1, False), "flat": (0, True)}[
        layout
    ]
    got = mon.per_example_sq_norms()
    for name in mon.tracked_parameters:
        torch.testing.assert_close(
            got[name], per[name].flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-9, msg=name
        )
    check_against_truth(model, mon, per, batch=B)


# --------------------------------------------------------------------------- overrides and errors


def test_batch_dim_override_and_unknown_fqn():
    torch.manual_seed(0)
    model = SeqFirstEncoder()
    swap_norms(model, batch_dim={"layer.norm1": 1, "layer.norm2": 1})
    mon = monitor(model)
    x = torch.randn(7, 4, 32)
    _seq_first_loss(model, x).backward()
    assert model.layer.norm1.example_layout.source == "override"
    assert mon.update().total.batch_size == 4
    model2 = SeqFirstEncoder()
    swap_norms(model2, batch_dim={"layer.nope": 1})
    with pytest.raises(GNSError, match="layer.nope"):
        _seq_first_loss(model2, x).backward()
    with pytest.raises(GNSError, match="batch_dim"):
        swap_norms(SeqFirstEncoder(), batch_dim="1")  # type: ignore[arg-type]


class NoExampleDim(nn.Module):
    """A norm applied to a summary over examples: no input dim of it indexes examples."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # (B, T, 8)
        h = F.scaled_dot_product_attention(h, h, h)
        return self.norm(h.mean(0)).sum()  # (T, 8): examples averaged away


def test_error_names_norm_without_example_dim():
    model = NoExampleDim()
    swap_norms(model)
    with pytest.raises(GNSError, match=r"'norm'.*batch_dim="):
        model(torch.randn(3, 5, 8)).backward()


def test_two_forwards_one_backward_are_pairs():
    """``loss = f(a) + f(b)`` before one backward: example i is the pair (a_i, b_i), B examples, with a warning.

    Truth: the gradient of pair i's own loss ``f(a_i) + f(b_i)`` by one-example backward passes.
    Control: the per-forward gradients (the old 2B reading) are not those norms.
    """
    torch.manual_seed(0)
    model = SeqFirstEncoder()
    swap_norms(model)
    mon = monitor(model)
    a, b = torch.randn(7, 3, 32), torch.randn(7, 3, 32)
    with pytest.warns(UserWarning, match="several model forwards"):
        (model(a).sum() + model(b).sum()).backward()
    per = one_example_grads(
        model,
        [(a[:, i : i + 1], b[:, i : i + 1]) for i in range(3)],
        lambda m, ab: m(ab[0]).sum() + m(ab[1]).sum(),
        mon.tracked_parameters,
    )
    single = one_example_grads(
        model, [x[:, i : i + 1] for x in (a, b) for i in range(3)], lambda m, x: m(x).sum(), mon.tracked_parameters
    )
    got = mon.per_example_sq_norms(loss_scale=1.0)
    assert mon.update().total.batch_size == 3
    for name in per:
        # loss_reduction="mean" scales by n = 3; this loss is a sum: compare unscaled, in example order.
        want = per[name].flatten(1).pow(2).sum(1)
        torch.testing.assert_close(got[name] / 9, want, rtol=1e-4, atol=1e-10)
        control = single[name].flatten(1).pow(2).sum(1)
        assert not torch.allclose(control[:3], want, rtol=1e-2)


class PositionsMajorFlat(nn.Module):
    """(T, B, H) flattened to (T*B, H) before the norm: examples interleave, not contiguous chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B, 8)
        h = self.inp(x)
        hb = h.transpose(0, 1)
        h = h + F.scaled_dot_product_attention(hb, hb, hb).transpose(0, 1)
        T, B, H = h.shape
        return self.norm(h.reshape(T * B, H)).sum()


def test_positions_major_flattening_is_refused_not_guessed():
    model = PositionsMajorFlat()
    swap_norms(model)
    with pytest.raises(GNSError, match=r"'norm'"):
        model(torch.randn(5, 3, 8)).backward()
