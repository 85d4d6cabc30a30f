"""ALiBi attention biases, with position interpolation (Al-Khateeb et al., 2023).

Why here and not in the model: the reference GPT, the recipes and user code all need
the same slopes; interpolation divides every slope by ``s = L / L_train`` so that a
model trained at ``L_train`` attends sensibly at longer lengths.
"""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head slopes ``m_h = 2^(-8h/n)`` (standard interleaving when n is not a power of two).

    Example:
        >>> alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """
    if n_heads <= 0:
        raise ValueError(f"alibi_slopes: n_heads must be positive, got {n_heads}")

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


def alibi_bias(
    slopes: torch.Tensor,
    q_len: int,
    k_len: int | None = None,
    *,
    interpolation: float = 1.0,
) -> torch.Tensor:
    """Additive attention bias ``-m_h/s * |i - j|`` of shape ``[heads, q_len, k_len]``.

    ``interpolation`` is the factor ``s >= 1`` that slopes are divided by.
    """
    k_len = q_len if k_len is None else k_len
    if interpolation < 1.0:
        raise ValueError(f"alibi_bias: interpolation factor must be >= 1, got {interpolation}")
    device = slopes.device
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    distance = (q_pos[:, None] - k_pos[None, :]).abs().to(slopes.dtype)  # [q, k]
    return -(slopes / interpolation)[:, None, None] * distance  # [heads, q, k]
