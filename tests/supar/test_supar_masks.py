"""Mask values: density, determinism across processes and chunking, independence across FQNs."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fxparam.lowering import masks as masks_mod
from fxparam.lowering.masks import index_hash, make_mask, mask_keys

FQN = "blocks.0.mlp.fc.weight"
#: sha256 of make_mask((64, 48), 0.25, 0, FQN): changing the hash breaks every saved run's masks.
PINNED_DIGEST = "9e63030baf0563b4d635f31a18008c5ec9210a5f5091e0453a0b0eb6aa14e321"


def _digest(mask: torch.Tensor) -> str:
    return hashlib.sha256(mask.numpy().tobytes()).hexdigest()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    density=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
    fqn=st.text(min_size=1, max_size=30),
)
def test_mask_is_bool_of_the_shape_with_binomial_density(rows, cols, density, seed, fqn):
    mask = make_mask((rows, cols), density, seed, fqn)
    assert mask.dtype == torch.bool and mask.shape == (rows, cols) and mask.is_contiguous()
    n = rows * cols
    kept = int(mask.sum())
    sd = math.sqrt(n * density * (1 - density))
    assert abs(kept - n * density) <= 5 * sd + 1  # Bernoulli(density) per entry
    assert torch.equal(mask, make_mask((rows, cols), density, seed, fqn))  # pure function
    if density == 1.0:
        assert bool(mask.all())


def test_masks_are_nested_in_density():
    # one hash per entry, compared with a threshold: a denser mask keeps a superset
    low, high = make_mask((128, 96), 0.125, 0, FQN), make_mask((128, 96), 0.5, 0, FQN)
    assert bool((low & ~high).sum() == 0)


def test_rows_and_columns_are_balanced_in_expectation():
    mask = make_mask((512, 512), 0.25, 0, FQN).float()
    assert mask.mean(1).std() < 0.04 and mask.mean(0).std() < 0.04  # binomial sd ~0.019
    assert abs(mask.mean().item() - 0.25) < 0.01


def test_chunking_does_not_change_the_mask(monkeypatch):
    whole = make_mask((97, 131), 0.3, 4, FQN)
    monkeypatch.setattr(masks_mod, "CHUNK", 1000)  # 13 chunks, the last partial
    assert torch.equal(make_mask((97, 131), 0.3, 4, FQN), whole)


def test_high_index_words_change_the_hash():
    keys = mask_keys(0, FQN)
    idx = torch.arange(0, 4096, dtype=torch.int64)
    a, b = index_hash(idx, keys), index_hash(idx + (1 << 32), keys)
    assert bool((a >= 0).all() and (a < 2**32).all())
    assert (a == b).float().mean() < 0.01  # entry i and entry i + 2**32 are unrelated
    assert len(set(a.tolist())) == 4096  # a bijection of the low word for a fixed high word


def test_different_fqns_and_seeds_give_independent_masks():
    shape, rho = (256, 256), 0.25
    base = make_mask(shape, rho, 0, "blocks.0.attn.qkv.weight").float()
    for other in (
        make_mask(shape, rho, 0, "blocks.1.attn.qkv.weight"),
        make_mask(shape, rho, 0, "blocks.0.attn.proj.weight"),
        make_mask(shape, rho, 1, "blocks.0.attn.qkv.weight"),
    ):
        both = (base * other.float()).mean().item()
        assert abs(both - rho * rho) < 0.006  # P(both kept) = rho^2 (sd ~0.0017)
        corr = torch.corrcoef(torch.stack([base.flatten(), other.float().flatten()]))[0, 1].item()
        assert abs(corr) < 0.02
    # neighbouring entries are not correlated either
    flat = base.flatten()
    lag = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(lag) < 0.02


def test_keys_are_a_stable_hash_not_pythons():
    # pinned: masks of existing checkpoints must not change between versions
    assert mask_keys(0, FQN) == mask_keys(0, FQN)
    assert mask_keys(0, FQN) != mask_keys(0, FQN + " ")
    digest = _digest(make_mask((64, 48), 0.25, 0, FQN))
    assert digest == PINNED_DIGEST


def test_same_seed_same_masks_in_another_process():
    code = (
        "import hashlib, torch\n"
        "from fxparam.lowering.masks import make_mask\n"
        f"m = make_mask((123, 77), 0.2, 11, {FQN!r})\n"
        "print(hashlib.sha256(m.numpy().tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str hash() in the child
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == _digest(make_mask((123, 77), 0.2, 11, FQN))


@pytest.mark.parametrize("density", [0.0, -1.0, 1.5])
def test_make_mask_rejects_bad_density(density):
    from fxparam.errors import LoweringError

    with pytest.raises(LoweringError, match=FQN):
        make_mask((4, 4), density, 0, FQN)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (masks must match CPU bit for bit)"
)
def test_cuda_masks_equal_cpu_masks():
    for shape, density in (((257, 129), 0.25), ((1024, 4096), 1 / 16)):
        cpu = make_mask(shape, density, 3, FQN)
        cuda = make_mask(shape, density, 3, FQN, device="cuda")
        assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)
