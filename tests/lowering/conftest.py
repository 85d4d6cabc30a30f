"""Lowering tests run tiny models: one intra-op thread is faster for them and leaves the other core free.

Dynamo's caches are process-wide (compiled frames, frames marked to skip after a graph break):
each test starts and ends with a clean Dynamo so no test sees another's compiled code.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _clean_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
