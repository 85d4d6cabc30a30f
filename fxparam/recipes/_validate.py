"""Input checks shared by the recipe modules: every failure is a RecipeError naming the fix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from fxparam.errors import RecipeError


def number(value: Any, name: str, where: str) -> float:
    """``value`` as a float, or a RecipeError saying which argument was not a number."""
    if isinstance(value, bool):
        raise RecipeError(f"{where}: {name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: {name} must be a number, got {value!r}") from None
    if math.isnan(v):
        raise RecipeError(f"{where}: {name} is NaN; check how it was computed")
    return v


def positive(value: Any, name: str, where: str, hint: str = "") -> float:
    """A finite, strictly positive float."""
    v = number(value, name, where)
    if not math.isfinite(v) or v <= 0:
        raise RecipeError(f"{where}: {name} must be a positive finite number, got {value!r}. {hint}".rstrip())
    return v


def non_negative(value: Any, name: str, where: str, hint: str = "") -> float:
    """A finite float >= 0."""
    v = number(value, name, where)
    if not math.isfinite(v) or v < 0:
        raise RecipeError(f"{where}: {name} must be a finite number >= 0, got {value!r}. {hint}".rstrip())
    return v


def array_1d(values: Any, name: str, where: str, *, min_len: int = 1) -> npt.NDArray[np.float64]:
    """A finite 1-D float64 array with at least ``min_len`` entries."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: {name} must be a sequence of numbers") from None
    if arr.ndim != 1:
        raise RecipeError(f"{where}: {name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_len:
        raise RecipeError(f"{where}: {name} needs at least {min_len} values, got {arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise RecipeError(f"{where}: {name}[{i}] is {arr[i]}; drop or fix non-finite values first")
    return arr


def batch_and_tokens(batch_tokens: Any, total_tokens: Any, where: str) -> tuple[float, float]:
    """Checked ``(B, D)`` in tokens, with ``B <= D`` (at least one step)."""
    d = positive(total_tokens, "total_tokens", where, "D is the number of training tokens")
    b = positive(batch_tokens, "batch_tokens", where, "B is the batch size in tokens (sequences x seq_len)")
    if b > d:
        raise RecipeError(
            f"{where}: batch_tokens={b:.4g} is larger than total_tokens={d:.4g} (fewer than one step); "
            "B and D must be in the same unit (tokens)"
        )
    return b, d
