"""The front door: ``fxparam.transform(model, "completep", base_width=256, base_depth=4)``."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn as nn

from fxparam.analysis import analyse
from fxparam.configs import AnyConfig, resolve_config
from fxparam.errors import ConfigError
from fxparam.lowering.eager import lower_eager
from fxparam.passes import build_plan
from fxparam.plan import Plan


def plan(model: nn.Module, config: str | AnyConfig, *, example_inputs: Any = None, **kwargs: Any) -> Plan:
    """What ``transform`` would do to ``model``, without doing it (a pure Plan)."""
    cfg = resolve_config(config, **kwargs)
    return build_plan(analyse(model, example_inputs), cfg)


def transform(
    model: nn.Module,
    config: str | AnyConfig,
    *,
    example_inputs: Any = None,
    init: bool = True,
    lowering: Literal["eager", "graph"] = "eager",
    **kwargs: Any,
) -> nn.Module:
    """Reparameterize ``model`` in place and return it (eager), or return a GraphModule.

    Args:
        model: any ``nn.Module`` (reference GPT, nanoGPT-style, Hugging Face...).
        config: a config object (``fxparam.CompleteP(base_width=256, base_depth=4)``) or a
            name: ``"sp"``, ``"mup"``, ``"completep"``, ``"supar"``, ``"gns"``, joined
            with ``+`` to compose; keyword arguments fill the named configs' fields.
        example_inputs: inputs for capture; optional for GPT and HF models.
        init: re-initialise weights per the plan; pass False before loading a checkpoint.
        lowering: "eager" (hooks and attributes on this module) or "graph" (a
            ``torch.fx.GraphModule`` with the multipliers as explicit nodes).

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = fxparam.transform(GPT(GPTConfig(width=128, depth=4)), "completep",
        ...                           base_width=64, base_depth=2)
        >>> opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    """
    the_plan = plan(model, config, example_inputs=example_inputs, **kwargs)
    return apply_plan(model, the_plan, init=init, lowering=lowering, example_inputs=example_inputs)


def apply_plan(
    model: nn.Module,
    the_plan: Plan | str,
    *,
    init: bool = False,
    lowering: Literal["eager", "graph"] = "eager",
    example_inputs: Any = None,
) -> nn.Module:
    """Apply a saved Plan (object or JSON) to a model of the same architecture.

    Defaults to ``init=False``: the usual use is re-creating a transformed model before
    loading its checkpoint.
    """
    if isinstance(the_plan, (str, bytes)):
        the_plan = Plan.from_json(the_plan)
    if lowering not in ("eager", "graph"):
        raise ConfigError(f"unknown lowering {lowering!r}; use 'eager' or 'graph' (or fxparam.backend for torch.compile)")
    from fxparam.lowering._rollback import all_or_nothing

    # all or nothing (issue 14): any failure, in the lowering or in its verification, restores the model exactly
    with all_or_nothing(model, values=init or bool(the_plan.masks)):
        if lowering == "eager":
            return lower_eager(model, the_plan, init=init)
        from fxparam.lowering.graph import lower_graph

        return lower_graph(model, the_plan, init=init, example_inputs=example_inputs)
