"""GNS on input kinds beyond issue 15's list (review R15): dict batches, paired forwards, packed
sequences, encoder-decoder stacks, uneven gradient accumulation, non-LN/RMS norms.

Truth in every test: per-example gradients from one-example backward passes of an *unswapped*
copy, computed here (brute force); never from fxparam's estimator.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from fxparam.errors import GNSError
from fxparam.gns import monitor, swap_norms, unbiased_estimates, unswap_norms

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _norm_params(model: nn.Module) -> list[str]:
    mods = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or "Norm" in type(m).__name__
    ]
    return [n for n, _ in model.named_parameters() if any(n.startswith(k + ".") for k in mods)]


def brute_force(model: nn.Module, examples: list, loss_fn) -> tuple[int, float, float]:
    """(B, |G|^2 est, tr(Sigma) est) over the norm parameters, from one backward per example."""
    plain = copy.deepcopy(model)
    unswap_norms(plain)
    names = _norm_params(plain)
    params = dict(plain.named_parameters())
    rows = []
    for ex in examples:
        plain.zero_grad()
        loss_fn(plain, ex).backward()
        rows.append(torch.cat([params[n].grad.flatten().double() for n in names]))
    g = torch.stack(rows)
    B = g.shape[0]
    g2, tr = unbiased_estimates(float(g.pow(2).sum(1).mean()), float(g.mean(0).pow(2).sum()), B)
    return B, g2, tr


def assert_matches(est, truth) -> None:
    B, g2, tr = truth
    assert est.total.batch_size == B
    assert math.isclose(est.total.trace_sigma_raw, tr, rel_tol=1e-3)
    assert math.isclose(est.total.g2_raw, g2, rel_tol=1e-3, abs_tol=1e-3 * abs(tr))


def _perturb_norms(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for n in _norm_params(model):
            p = model.get_parameter(n)
            p.add_(0.1 * torch.randn_like(p))
    return model


class DictBatchNet(nn.Module):
    """A model whose batch is one dict argument (``model(batch)``), with attention over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(6, 16)
        self.ln = nn.LayerNorm(16)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(16)
        self.out = nn.Linear(16, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.ln(self.emb(batch["x"]))
        h = h + self.att(h, h, h)[0]
        return self.out(self.ln2(h)).squeeze(-1)


def _dict_loss(m, b):
    return (m({"x": b["x"]}) - b["y"]).pow(2).mean()


def test_dict_batch_input_matches_one_example_backwards():
    """The example dim is found inside a dict input (it was refused: only top-level tensors were traced)."""
    torch.manual_seed(0)
    model = _perturb_norms(DictBatchNet())
    x, y = torch.randn(5, 7, 6), torch.randn(5, 7)
    truth = brute_force(model, [{"x": x[i : i + 1], "y": y[i : i + 1]} for i in range(5)], _dict_loss)
    swap_norms(model)
    mon = monitor(model)
    _dict_loss(model, {"x": x, "y": y}).backward()
    assert_matches(mon.update(), truth)
    # the count is read from the dict each forward: another batch size is counted right
    _dict_loss(model, {"x": x[:3], "y": y[:3]}).backward()
    assert mon.update().total.batch_size == 3


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 16)
        self.ln = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 6) -> (B, 16)
        return self.ln(self.lin(x)).mean(1)


def _contrastive(m, ab):
    return (m(ab[0]) * m(ab[1])).sum(-1).pow(2).mean()


def test_contrastive_two_forwards_match_pair_truth():
    """``loss(f(a), f(b))`` coupling a_i with b_i: B examples (pairs), not 2B halves (was B=10, wrong norms)."""
    torch.manual_seed(0)
    model = _perturb_norms(Encoder())
    a, b = torch.randn(5, 4, 6), torch.randn(5, 4, 6)
    truth = brute_force(model, [(a[i : i + 1], b[i : i + 1]) for i in range(5)], _contrastive)
    swap_norms(model)
    mon = monitor(model)
    with pytest.warns(UserWarning, match="several model forwards"):
        _contrastive(model, (a, b)).backward()
    assert_matches(mon.update(), truth)


def test_uneven_accumulation_and_no_grad_eval_between_steps():
    """3 micro-batches of sizes 1, 2, 3 (loss weighted n_k/N) equal 6 one-example backwards; an eval
    forward under no_grad between steps changes nothing."""
    torch.manual_seed(0)
    model = _perturb_norms(DictBatchNet())
    x, y = torch.randn(6, 5, 6), torch.randn(6, 5)
    truth = brute_force(model, [{"x": x[i : i + 1], "y": y[i : i + 1]} for i in range(6)], _dict_loss)
    swap_norms(model)
    mon = monitor(model)
    for _step in range(2):
        for lo, hi in ((0, 1), (1, 3), (3, 6)):
            (_dict_loss(model, {"x": x[lo:hi], "y": y[lo:hi]}) * (hi - lo) / 6).backward()
        assert_matches(mon.update(), truth)
        model.zero_grad()
        with torch.no_grad():
            model.eval()
            _dict_loss(model, {"x": x[:4], "y": y[:4]})
            model.train()


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, 16)
        self.ln = nn.LayerNorm(16)

    def forward(self, ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        return self.ln(self.emb(ids)).pow(2).mean()


@pytest.mark.parametrize("as_kwarg", [False, True])
def test_packed_varlen_sequences_are_refused(as_kwarg):
    """Packed (total_tokens,) ids with cu_seqlens: each token was read as an example (n=20 for 3 sequences)."""
    model = Packed()
    swap_norms(model)
    ids, cu = torch.randint(0, 64, (20,)), torch.tensor([0, 5, 12, 20])
    with pytest.raises(GNSError, match=r"cu_seqlens.*\['ln'\]"):
        model(ids, cu_seqlens=cu) if as_kwarg else model(ids, cu)
    # control: the same model without packing metadata trains (tokens of a (B, T) batch)
    model2 = Packed()
    swap_norms(model2)
    mon = monitor(model2)
    model2(torch.randint(0, 64, (3, 7))).backward()
    assert mon.update().total.batch_size == 3


def test_groupnorm_is_named_as_not_tracked():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.LazyLinear(1))
    with pytest.warns(UserWarning, match=r"'1': GroupNorm is not a LayerNorm or RMSNorm"):
        assert swap_norms(model) == []


def test_t5_encoder_decoder_norms_on_both_stacks():
    """T5: RMS-style norms in the encoder and the decoder (another sequence length); both count B examples."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=64,
        d_model=16,
        d_ff=32,
        d_kv=4,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    model = _perturb_norms(transformers.T5ForConditionalGeneration(cfg))
    ids, labels = torch.randint(0, 64, (4, 9)), torch.randint(0, 64, (4, 3))

    def loss(m, b):
        return m(input_ids=b[0], labels=b[1]).loss

    truth = brute_force(model, [(ids[i : i + 1], labels[i : i + 1]) for i in range(4)], loss)
    swap_norms(model)
    mon = monitor(model)
    loss(model, (ids, labels)).backward()
    est = mon.update()
    assert any("decoder" in k for k in est.layers) and any("encoder" in k for k in est.layers)
    assert_matches(est, truth)


def test_forward_without_backward_is_not_a_pair():
    """A forward with gradients on that is never backpropagated (loss logging) shares the sink of the next
    training forward but adds nothing: no pair warning, and the norms equal the one-example truth."""
    import warnings

    torch.manual_seed(0)
    model = _perturb_norms(Encoder())
    a, b, y = torch.randn(5, 4, 6), torch.randn(5, 4, 6), torch.randn(5, 16)

    def loss(m, ab):
        return (m(ab[0]) - ab[1]).pow(2).sum(-1).mean()

    truth = brute_force(model, [(a[i : i + 1], y[i : i + 1]) for i in range(5)], loss)
    swap_norms(model)
    mon = monitor(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*several model-input dims")
        loss(model, (b, y))  # never backpropagated
        loss(model, (a, y)).backward()
    assert_matches(mon.update(), truth)
