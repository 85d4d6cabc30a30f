"""Gradient noise scale from normalization-layer per-example gradients.

- :func:`swap_norms` makes a model's LayerNorm/RMSNorm modules report per-example gradient
  norms (in place; parameters, state_dict and outputs unchanged).
- :func:`monitor` returns a :class:`GNSMonitor`: per-example squared norms, unbiased
  ``|G|^2`` / ``tr(Sigma)`` estimates and the smoothed simple noise scale ``B_simple``, per layer
  and total, with gradient accumulation, DDP and mixed precision.
- :func:`prepare` finds which input dim of each norm indexes examples and allocates the
  per-example gradient sinks, before the first ``torch.compile`` call (eager forwards do both
  by themselves); :func:`find_layouts` is the finding alone.
- :class:`BatchSizeSchedule`: the paper's token ramp and an online schedule driven by the
  measured noise scale, with weight decay rescaled to hold the AdamW timescale.

Example:
    >>> import torch
    >>> from fxparam.models.gpt import GPT, GPTConfig
    >>> model = GPT(GPTConfig(width=32, depth=1, head_dim=16))
    >>> _ = swap_norms(model)
    >>> mon = monitor(model)
    >>> idx = torch.randint(0, 256, (4, 8))
    >>> model(idx, idx)[1].backward()
    >>> sorted(mon.update().as_dict())[:2]
    ['gns/b_simple', 'gns/b_simple_raw']
"""

from fxparam.gns._batch_dim import find_layouts, prepare
from fxparam.gns._estimators import EMA, ratio, two_batch_estimates, unbiased_estimates
from fxparam.gns._monitor import GNSEstimate, GNSMonitor, GNSStats, monitor
from fxparam.gns._schedule import PAPER_111M_TOTAL_TOKENS, BatchSizeSchedule
from fxparam.lowering.norm_swap import swap_norms, unswap_norms  # the swap mutates modules: lowering's job

__all__ = [
    "BatchSizeSchedule",
    "EMA",
    "GNSEstimate",
    "GNSMonitor",
    "GNSStats",
    "PAPER_111M_TOTAL_TOKENS",
    "find_layouts",
    "monitor",
    "prepare",
    "ratio",
    "swap_norms",
    "two_batch_estimates",
    "unbiased_estimates",
    "unswap_norms",
]
