"""Shared fixtures of the SμPar tests: one analysed tiny GPT, plans built without re-capturing."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

import fxparam
from fxparam.configs import AnyConfig
from fxparam.models import GPT, GPTConfig
from fxparam.passes import build_plan

#: Tiny reference GPT: 2 blocks, 4 heads of 16, byte-ish vocab, short sequences.
TINY = GPTConfig(width=64, depth=2, head_dim=16, vocab=128, seq_len=32)
#: The masked weights of TINY (hidden matmuls inside the blocks).
HIDDEN = [f"blocks.{b}.{m}.weight" for b in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models: intra-op threads only add OpenMP spin-waits (10-25x slower on a busy 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_analysis() -> fxparam.Analysis:
    return fxparam.inspect(GPT(TINY))


@pytest.fixture(scope="session")
def make_tiny(tiny_analysis: fxparam.Analysis) -> Callable[..., torch.nn.Module]:
    """``make_tiny(config, init=True, seed=0)``: a fresh TINY GPT with ``config`` applied (no re-capture)."""

    def make(config: AnyConfig | None, *, init: bool = True, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = GPT(TINY)
        if config is None:
            return model
        return fxparam.apply_plan(model, build_plan(tiny_analysis, config), init=init)

    return make


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randint(0, TINY.vocab, (4, TINY.seq_len), generator=torch.Generator().manual_seed(7))
