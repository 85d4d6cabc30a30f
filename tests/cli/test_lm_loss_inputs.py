"""lm_loss and the sweeps on models a user brings (review R17b leftovers): dict outputs, short position
tables, and bidirectional encoders, whose next-token loss sees every target.

Expected values by hand: the cross-entropy of known logits; a causal model's logits at positions < T-1
cannot change when token T-1 changes, a bidirectional one's do.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fxparam.checks.coord import lm_loss, looks_ahead
from fxparam.errors import ConfigError


class Uniform(nn.Module):
    """Zero logits over 8 tokens: cross-entropy ln 8 whatever the targets."""

    def __init__(self, wrap="dict"):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.wrap = wrap

    def forward(self, x):
        logits = torch.zeros(*x.shape, 8) * self.w
        return {"logits": logits} if self.wrap == "dict" else {"scores": logits}


def test_dict_output_gives_the_logits_loss():
    x = torch.randint(0, 8, (2, 5))
    assert lm_loss(Uniform(), (x, x)).item() == pytest.approx(math.log(8))


def test_dict_without_logits_is_a_clear_error():
    x = torch.randint(0, 8, (2, 5))
    with pytest.raises(ConfigError, match="without 'logits'.*scores"):
        lm_loss(Uniform("other"), (x, x))


class LearnedPositions(nn.Module):
    def __init__(self, positions=4, vocab=16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, 8), nn.Embedding(positions, 8)
        self.head = nn.Linear(8, vocab)

    def forward(self, x):
        return self.head(self.tok(x) + self.pos(torch.arange(x.shape[1])))


def test_a_sequence_past_the_position_table_names_positions():
    x = torch.randint(0, 16, (2, 6))  # 6 positions, the table has 4; every id is in the vocabulary
    with pytest.raises(ConfigError, match="6 positions.*position table"):
        lm_loss(LearnedPositions(), (x, x))


class Mixer(nn.Module):
    """Each position sees the mean over the sequence (causal=False) or over its prefix (causal=True)."""

    def __init__(self, causal, vocab=16):
        super().__init__()
        self.causal = causal
        self.emb, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, x):
        h = self.emb(x)
        if self.causal:
            h = h.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)
        else:
            h = h.mean(1, keepdim=True).expand_as(h)
        return self.head(F.gelu(h))


def test_looks_ahead_measures_bidirectional_attention():
    x = torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(0))
    assert looks_ahead(Mixer(causal=False), x) is True
    assert looks_ahead(Mixer(causal=True), x) is False


def test_looks_ahead_on_hf_models():
    pytest.importorskip("transformers")
    from fxparam.models.hf import hf_model

    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    assert looks_ahead(hf_model("bert"), x) is True  # an encoder attends both ways
    assert looks_ahead(hf_model("gpt2"), x) is False


def test_transfer_refuses_a_model_that_sees_its_targets():
    pytest.importorskip("transformers")
    from fxparam.checks.transfer import transfer

    with pytest.raises(ConfigError, match="attends to later tokens"):
        transfer(model="hf:bert", sizes=[32], params=["sp"], lrs=[1e-3], steps=1, seeds=[0], batch_size=2,
                 seq_len=16, eval_batches=1, progress=False)
