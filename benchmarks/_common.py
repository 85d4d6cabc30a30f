"""What every benchmark shares: the machine it ran on, timing, and writing ``benchmarks/results/<name>.json``.

Benchmarks run as scripts (``python benchmarks/<name>.py``), so they import this module as
``from _common import ...`` (the script's folder is on ``sys.path``).  Speed is measured
here and never asserted in tests; ratios are measured side by side so that machine noise
hits both sides alike.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")

__all__ = ["RESULTS", "best_of", "machine", "median_ms", "timed", "write_result"]


def machine(*, capability: bool = False) -> dict[str, str]:
    """``{"machine": "<arch> CPU, <n> threads", "torch": ..., "python": ...}`` for a result file.

    Args:
        capability: add torch's CPU capability (``AVX2``, ``AVX512``...) to the machine line.
    """
    cpu = f"{platform.machine()} CPU"
    if capability:
        cpu += f" ({torch.backends.cpu.get_cpu_capability()})"
    return {
        "machine": f"{cpu}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """``(wall seconds, fn())`` of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_of(fn: Callable[[], T], repeats: int = 3) -> tuple[float, T]:
    """The fastest of ``repeats`` calls (seconds) and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        seconds, out = timed(fn)
        best = min(best, seconds)
    return best, out  # type: ignore[return-value]


def median_ms(seconds: Sequence[float]) -> float:
    """The median of ``seconds`` in milliseconds, rounded to 0.01 ms."""
    return round(1000 * statistics.median(seconds), 2)


def write_result(name: str, result: dict[str, Any], *, path: str | Path | None = None) -> Path:
    """Write ``result`` (with the machine fields first unless given) to ``benchmarks/results/<name>.json``.

    Returns:
        The path written.
    """
    out = Path(path) if path is not None else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**{k: v for k, v in machine().items() if k not in result}, **result}
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")
    return out
