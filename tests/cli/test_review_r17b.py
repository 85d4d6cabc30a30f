"""Review R17b (issue 17): the checks tried as a new user would, on inputs the issue did not list.

Every expected value is built by hand in the test (a batch sliced from known token ids, a
residual computed from the curves' formulas), never read from fxparam's own output.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fxparam.checks.data import FixedBatches, as_batch

# ---------------------------------------------------------------- data: one batch or a list of batches

IDS = torch.arange(8 * 17).reshape(8, 17)  # row r holds 17r .. 17r + 16: next-token pairs are checkable by eye


def _next_token(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of a [B, T+1] block, by hand."""
    return block[:, :-1], block[:, 1:]


def test_a_list_of_two_batches_is_not_silently_an_inputs_targets_pair():
    # [batch1, batch2] was read as (inputs=batch1, targets=batch2): the second batch's tokens became
    # the first's targets, no warning (a list of three batches was read right: its first batch)
    b1, b2 = IDS[:4], IDS[4:]
    with pytest.warns(UserWarning, match="iter\\(\\[batch1, batch2\\]\\)"):
        as_batch([b1, b2])
    # the fix the warning names, and a list of three, both read the first batch as next-token pairs
    for data in (iter([b1, b2]), [b1, b2, b1]):
        x, y = as_batch(data)
        hx, hy = _next_token(b1)
        assert torch.equal(x, hx) and torch.equal(y, hy)
    # two batches of different sizes (a short last batch) cannot be a pair: the first batch
    x, y = as_batch([b1, b2[:2]])
    assert torch.equal(x, b1[:, :-1]) and torch.equal(y, b1[:, 1:])


def test_real_pairs_read_as_pairs_without_a_warning():
    hx, hy = _next_token(IDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = as_batch((hx, hy))  # next-token targets
        assert torch.equal(x, hx) and torch.equal(y, hy)
        masked = hy.clone()
        masked[:, :3] = -100  # a masked prompt
        assert torch.equal(as_batch([hx, masked])[1], masked)
        # a DataLoader over TensorDataset(x, y) yields lists [x_b, y_b]
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(hx, hy), batch_size=4)
        x, y = as_batch(loader)
        assert torch.equal(x, hx[:4]) and torch.equal(y, hy[:4])
        # labels equal to the inputs (Hugging Face convention, as for a dict's labels): shifted by one,
        # not a copy task (every target its own input: loss -> 0)
        x, y = as_batch((IDS, IDS.clone()))
        assert torch.equal(x, IDS[:, :-1]) and torch.equal(y, IDS[:, 1:])


@pytest.mark.parametrize(
    "single",
    [
        pytest.param(lambda: IDS, id="tensor"),
        pytest.param(lambda: _next_token(IDS), id="pair"),
        pytest.param(lambda: {"input_ids": IDS}, id="dict"),
        pytest.param(lambda: {"input_ids": IDS, "labels": IDS.clone()}, id="dict-labels"),
    ],
)
def test_transfer_data_as_one_batch_is_one_batch(single):
    # FixedBatches (what transfer(data=...) builds) iterated a single batch: a [B, T+1] tensor by its
    # rows (refused: 'got (17,)'), a dict by its keys ('cannot use str'), and a pair as two batches
    # (its inputs split into 16 + 15 tokens, then its targets): batch 8x15 instead of 8x16
    fb = FixedBatches(single(), eval=[IDS[:2]])
    hx, hy = _next_token(IDS)
    assert len(fb.train) == 1
    x, y = fb.train[0]
    assert torch.equal(x, hx) and torch.equal(y, hy)
    # negative control: an iterable of batches is still read batch by batch
    fb = FixedBatches([IDS[:4], IDS[4:], IDS[:4]], eval_count=1)
    assert [tuple(x.shape) for x, _ in fb.train] == [(4, 16), (4, 16)]
