"""fxparam.lowering.sdpa: the one hook on F.scaled_dot_product_attention (eager lowering + coordinate check)."""

from __future__ import annotations

import doctest
import math

import torch
import torch.nn.functional as F

from fxparam.lowering import sdpa


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v, written out (the independent reference)."""
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def test_docstring_example_runs() -> None:
    result = doctest.testmod(sdpa, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_scopes_nest_and_observers_see_the_scale_in_use() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    seen: list[float] = []
    with sdpa.observe(lambda q_, k_, scale: seen.append(scale)):
        plain = F.scaled_dot_product_attention(q, k, v)
        with sdpa.override_scale(0.5):
            outer = F.scaled_dot_product_attention(q, k, v, scale=0.1)  # the override wins over scale=
            with sdpa.override_scale(2.0):
                inner = F.scaled_dot_product_attention(q, k, v)
            back = F.scaled_dot_product_attention(q, k, v)
    after = F.scaled_dot_product_attention(q, k, v, scale=0.25)
    assert seen == [1 / math.sqrt(8), 0.5, 2.0, 0.5]  # nothing observed after the block
    tol = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(plain, _attention(q, k, v, 1 / math.sqrt(8)), **tol)
    torch.testing.assert_close(outer, _attention(q, k, v, 0.5), **tol)
    torch.testing.assert_close(inner, _attention(q, k, v, 2.0), **tol)
    torch.testing.assert_close(back, _attention(q, k, v, 0.5), **tol)
    torch.testing.assert_close(after, _attention(q, k, v, 0.25), **tol)  # outside every scope: passes through
    assert sdpa.current_scale(None) is None



_EAGER_THEN_GRAPH = """
import sys, torch, torch.nn.functional as F
from fxparam.lowering import sdpa
sdpa.install()  # what an eager transform of nanoGPT-style code or fxparam.verify does first
assert F.scaled_dot_product_attention is not torch._C._nn.scaled_dot_product_attention
assert "fxparam.lowering.graph" not in sys.modules  # the graph lowering is first imported after the wrapper
import fxparam
from fxparam.models import GPT, GPTConfig
model = GPT(GPTConfig(width=64, depth=2))
be = fxparam.backend(fxparam.plan(model, "mup", base_width=32), inner="eager")
torch.compile(model, backend=be)(torch.zeros(2, 8, dtype=torch.long))
assert be.plan_pass.missing() == [], be.plan_pass.missing()
print("ok")
"""


def test_graph_lowering_finds_sdpa_after_an_eager_transform_installed_the_wrapper() -> None:
    """Eager transform, then a graph lowering in the same process: the graph must still match the SDPA node a
    capture records (torch's own function), not F's attribute as it was when the lowering was imported."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _EAGER_THEN_GRAPH], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
