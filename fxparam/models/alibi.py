"""ALiBi attention biases, with position interpolation (Al-Khateeb et al., 2023, arXiv 2310.13017).

Why here and not in the model: the reference GPT, the recipes and user code all need
the same slopes; interpolation divides every slope by ``s = L / L_train`` so that a
model trained at ``L_train`` attends sensibly at longer lengths (usable context ~2x the
training length instead of ~12% more).

Two modes:

- *fixed*: ``s = max(1, L_target / L_train)`` chosen once for the longest length you will serve;
- *dynamic*: ``s = max(1, L_cur / L_train)`` recomputed from the current sequence length, so
  sequences no longer than ``L_train`` see exactly the trained biases.
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import torch
from torch import nn

from fxparam.errors import RecipeError

InterpolationMode = Literal["none", "fixed", "dynamic"]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head slopes ``m_h = 2^(-8h/n)`` (standard interleaving when n is not a power of two).

    Example:
        >>> alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """
    try:
        n_heads = operator.index(n_heads)
    except TypeError:
        raise RecipeError(f"alibi_slopes: n_heads must be a positive integer, got {n_heads!r}") from None
    if n_heads <= 0:
        raise RecipeError(f"alibi_slopes: n_heads must be a positive integer, got {n_heads!r}")

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two_slopes(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two_slopes(closest)
        slopes += power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def interpolation_factor(
    train_len: int,
    *,
    seq_len: int | None = None,
    target_len: int | None = None,
    mode: InterpolationMode = "dynamic",
) -> float:
    """The factor ``s >= 1`` that ALiBi slopes are divided by.

    Args:
        train_len: the sequence length the model was trained at (``L_train``).
        seq_len: the current sequence (key) length ``L_cur`` (dynamic mode).
        target_len: the longest length to serve ``L_target`` (fixed mode).
        mode: ``"dynamic"`` -> ``max(1, seq_len / train_len)``; ``"fixed"`` ->
            ``max(1, target_len / train_len)``; ``"none"`` -> 1.

    Raises:
        RecipeError: non-positive lengths or the length the mode needs is missing.

    Example:
        >>> interpolation_factor(2048, seq_len=4096), interpolation_factor(2048, seq_len=1000)
        (2.0, 1.0)
        >>> interpolation_factor(2048, target_len=8192, mode="fixed")
        4.0
    """
    where = f"interpolation_factor(mode={mode!r})"

    def check(name: str, v: int | None) -> int:
        if v is None:
            need = {"dynamic": "seq_len", "fixed": "target_len"}.get(mode, name)
            raise RecipeError(f"{where}: {need} is required in {mode} mode")
        if isinstance(v, bool) or int(v) != v or v <= 0:
            raise RecipeError(f"{where}: {name} must be a positive integer, got {v!r}")
        return int(v)

    lt = check("train_len", train_len)
    if mode == "none":
        return 1.0
    if mode == "dynamic":
        return max(1.0, check("seq_len", seq_len) / lt)
    if mode == "fixed":
        return max(1.0, check("target_len", target_len) / lt)
    raise RecipeError(f"{where}: mode must be 'none', 'fixed' or 'dynamic'")


def alibi_bias(
    slopes: torch.Tensor,
    q_len: int,
    k_len: int | None = None,
    *,
    interpolation: float = 1.0,
) -> torch.Tensor:
    """Additive attention bias ``-m_h/s * |i - j|`` of shape ``[heads, q_len, k_len]``.

    ``interpolation`` is the factor ``s >= 1`` that slopes are divided by (see
    :func:`interpolation_factor`). Queries are the last ``q_len`` of the ``k_len`` positions.

    Example:
        >>> alibi_bias(alibi_slopes(2), 2, interpolation=2.0)[0]
        tensor([[-0.0000, -0.0312],
                [-0.0312, -0.0000]])
    """
    k_len = q_len if k_len is None else k_len
    if q_len <= 0 or k_len <= 0 or q_len > k_len:
        raise RecipeError(
            f"alibi_bias: need 0 < q_len <= k_len (queries are the last q_len keys), got q_len={q_len}, k_len={k_len}"
        )
    if not math.isfinite(interpolation) or interpolation < 1.0:
        raise RecipeError(
            f"alibi_bias: interpolation factor must be >= 1, got {interpolation}; "
            "use interpolation_factor(train_len, seq_len=...) to compute it"
        )
    device = slopes.device
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    distance = (q_pos[:, None] - k_pos[None, :]).abs().to(slopes.dtype)  # [q, k]
    return -(slopes / interpolation)[:, None, None] * distance  # [heads, q, k]


def alibi_attention_bias(
    n_heads: int,
    q_len: int,
    k_len: int | None = None,
    *,
    train_len: int | None = None,
    mode: InterpolationMode = "dynamic",
    target_len: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """ALiBi bias ``[heads, q_len, k_len]`` with position interpolation in one call.

    Args:
        n_heads: number of attention heads.
        q_len, k_len: query and key lengths (``k_len`` defaults to ``q_len``).
        train_len: training length ``L_train``; None (or ``mode="none"``) = no interpolation.
        mode: ``"dynamic"`` (``s = max(1, k_len / train_len)``), ``"fixed"`` (from ``target_len``)
            or ``"none"``.
        target_len: the fixed-mode serving length.
        device, dtype: of the result.

    Example:
        >>> b = alibi_attention_bias(4, 8, train_len=4)  # dynamic: s = 2
        >>> torch.allclose(b, alibi_bias(alibi_slopes(4), 8) / 2)
        True
    """
    k = q_len if k_len is None else k_len
    s = (
        1.0
        if train_len is None
        else interpolation_factor(train_len, seq_len=k, target_len=target_len, mode=mode)
    )
    slopes = alibi_slopes(n_heads).to(device=device, dtype=dtype)
    return alibi_bias(slopes, q_len, k, interpolation=s)


class ALiBi(nn.Module):
    """ALiBi biases as a module: ``forward(q_len, k_len=None) -> [heads, q_len, k_len]``.

    Slopes live in a non-persistent buffer (they follow ``.to()`` but stay out of ``state_dict``).

    Args:
        n_heads: number of heads.
        train_len: training length ``L_train`` (None = no interpolation).
        mode: ``"dynamic"``, ``"fixed"`` or ``"none"``.
        target_len: serving length for ``"fixed"``.

    Example:
        >>> alibi = ALiBi(4, train_len=128)
        >>> alibi(256).shape
        torch.Size([4, 256, 256])
    """

    slopes: torch.Tensor

    def __init__(
        self,
        n_heads: int,
        *,
        train_len: int | None = None,
        mode: InterpolationMode = "dynamic",
        target_len: int | None = None,
    ) -> None:
        super().__init__()
        if train_len is not None:  # validate the configuration once, up front
            interpolation_factor(train_len, seq_len=train_len, target_len=target_len, mode=mode)
        self.n_heads, self.train_len, self.mode, self.target_len = n_heads, train_len, mode, target_len
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def factor(self, seq_len: int) -> float:
        """The interpolation factor used at key length ``seq_len``."""
        if self.train_len is None:
            return 1.0
        return interpolation_factor(
            self.train_len, seq_len=seq_len, target_len=self.target_len, mode=self.mode
        )

    def forward(self, q_len: int, k_len: int | None = None) -> torch.Tensor:
        k = q_len if k_len is None else k_len
        return alibi_bias(self.slopes, q_len, k, interpolation=self.factor(k))  # [heads, q, k]

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, train_len={self.train_len}, mode={self.mode!r}, target_len={self.target_len}"


__all__ = ["ALiBi", "alibi_attention_bias", "alibi_bias", "alibi_slopes", "interpolation_factor"]
