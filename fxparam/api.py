"""The front door: the public verbs ``transform``, ``plan``, ``apply_plan``, ``inspect``, ``compile``.

``fxparam.transform(model, "completep", base_width=256, base_depth=4)`` runs the whole
pipeline: capture -> analyse (:mod:`fxparam.analysis`) -> plan (:mod:`fxparam.passes`)
-> lower (:mod:`fxparam.lowering`).  This module is the only one that calls all four
layers; none of them imports it (``tests/test_layering.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch.nn as nn

from fxparam.analysis import Analysis, analyse
from fxparam.configs import AnyConfig, resolve_config
from fxparam.errors import ConfigError
from fxparam.lowering.eager import lower_eager
from fxparam.passes import build_plan
from fxparam.plan import Plan

__all__ = ["apply_plan", "compile", "inspect", "plan", "transform"]


def inspect(model: nn.Module, example_inputs: Any = None, *, roles: dict[str, str] | None = None,
            rebuild: Any = None) -> Analysis:
    """Analyse ``model``'s structure without modifying it.

    Captures a meta-device skeleton (no memory, cost independent of width), then finds
    residual blocks, parameter roles and width dimensions, attention sites, norms and
    tied weights.

    Args:
        model: any ``torch.nn.Module``.
        example_inputs: a tensor, tuple, dict of kwargs or ``(args, kwargs)``; optional
            for ``fxparam.models.GPT`` and Hugging Face models (``config.vocab_size``).
        roles: per-parameter role overrides ``{"fqn" or "re:pattern": "embedding" | "hidden" |
            "readout" | "vector" | "frozen"}``; a parameter fxparam cannot classify gets an
            ``UnclassifiedWarning`` and a note naming this override.
        rebuild: ``make(width) -> nn.Module`` (or True for the reference GPT / HF configs): a
            second build at twice the width (meta) cross-checks the width dims and finds forward
            constants that change with width (an embedding times sqrt(d): divided out under muP).

    Returns:
        The :class:`~fxparam.Analysis` (``print`` it for a table; ``.to_json()``).

    Raises:
        CaptureError: the model cannot be captured (no example inputs could be made, or
            tracing failed), naming the fix.
        AnalysisError: the structure is ambiguous in a way fxparam refuses to guess.

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> fxparam.inspect(GPT(GPTConfig(width=64, depth=2))).depth
        2
    """
    from fxparam.lowering._rollback import inner_module

    return analyse(inner_module(model), example_inputs, roles=roles, rebuild=rebuild)  # through torch.compile / DDP; PEFT, FSDP refused


def plan(
    model: nn.Module,
    config: str | AnyConfig,
    *,
    example_inputs: Any = None,
    roles: dict[str, str] | None = None,
    rebuild: Any = None,
    **kwargs: Any,
) -> Plan:
    """What ``transform`` would do to ``model``, without doing it (a pure Plan).

    Args:
        model: any ``nn.Module`` (left untouched).
        config: a config object or a name (``"mup"``, ``"completep+supar"``), as for :func:`transform`.
        example_inputs: inputs for capture; optional for GPT and HF models.
        roles: per-parameter role overrides, as for :func:`inspect`.
        rebuild: a second build at another width, as for :func:`inspect`.
        **kwargs: fields of the named config(s) (``base_width=...``).

    Returns:
        The :class:`~fxparam.Plan`: per-parameter init / LR / weight-decay / eps rules,
        forward multipliers, attention scales, masks (JSON with ``.to_json()``).

    Raises:
        ConfigError: unknown name, missing or invalid field, or a keyword no config knows.
        CaptureError, AnalysisError: as for :func:`inspect`.
        PlanError: a pass broke the plan's postconditions.

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> fxparam.plan(GPT(GPTConfig(width=64, depth=2)), "mup", base_width=32).m_d
        2.0
    """
    from fxparam.lowering._rollback import inner_module, model_shapes

    cfg = resolve_config(config, **kwargs)
    model = inner_module(model)
    the_plan = build_plan(analyse(model, example_inputs, roles=roles, rebuild=rebuild), cfg)
    the_plan.model_shapes = model_shapes(model)  # the analysis fingerprint apply_plan checks
    return the_plan


def transform(
    model: nn.Module,
    config: str | AnyConfig,
    *,
    example_inputs: Any = None,
    init: bool = True,
    lowering: Literal["eager", "graph"] = "eager",
    roles: dict[str, str] | None = None,
    rebuild: Any = None,
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
        roles: per-parameter role overrides, as for :func:`inspect`.
        rebuild: a second build at another width, as for :func:`inspect`.

    Returns:
        ``model`` itself, transformed in place (eager), or a new ``torch.fx.GraphModule``
        sharing its Parameters (graph); either way ``fxparam.plan_of`` finds the plan.

    Raises:
        ConfigError: as for :func:`plan`, or an unknown ``lowering``.
        CaptureError, AnalysisError, PlanError: as for :func:`plan`.
        AlreadyTransformedError: ``model`` was transformed before (it would be double-scaled).
        LoweringError: the plan cannot be applied to this model (a site it cannot scale).
        GNSError: a norm cannot be swapped for its per-example-gradient version (GNS).

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = fxparam.transform(GPT(GPTConfig(width=128, depth=4)), "completep",
        ...                           base_width=64, base_depth=2)
        >>> opt = fxparam.optimizer(model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    """
    the_plan = plan(model, config, example_inputs=example_inputs, roles=roles, rebuild=rebuild, **kwargs)
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

    Args:
        model: a model of the architecture the plan was built for.
        the_plan: a :class:`~fxparam.Plan` or its JSON (version-1 JSON is upgraded).
        init: re-initialise weights per the plan.
        lowering: "eager" or "graph", as for :func:`transform`.
        example_inputs: inputs for the graph lowering's export (optional for GPT / HF).

    Returns:
        As for :func:`transform`.

    Raises:
        PlanError: ``the_plan`` is not valid plan JSON.
        ConfigError: an unknown ``lowering``.
        AlreadyTransformedError, LoweringError, GNSError: as for :func:`transform`.
    """
    if isinstance(the_plan, (str, bytes)):
        the_plan = Plan.from_json(the_plan)
    if lowering not in ("eager", "graph"):
        raise ConfigError(f"unknown lowering {lowering!r}; use 'eager' or 'graph' (or fxparam.backend for torch.compile)")
    from fxparam.lowering._rollback import all_or_nothing, inner_module

    wrapper, model = model, inner_module(model, init=init, mutate=True)  # the user's wrapper is never written
    if init and any(p.device.type == "meta" for p in model.parameters()):
        raise ConfigError(
            f"{type(model).__name__} is on the meta device: init=True cannot draw its weights (they would be "
            "garbage after to_empty). Transform with init=False, then model.to_empty(device=...) and "
            "fxparam.init_weights(model)."
        )
    # all or nothing (issue 14): any failure, in the lowering or in its verification, restores the model exactly
    with all_or_nothing(model, values=init or bool(the_plan.masks)):
        if lowering == "eager":
            from fxparam.lowering.verify import verify

            lower_eager(model, the_plan, init=init)
            verify(model, example_inputs=example_inputs, init=init, raise_on_failure=True)
            from fxparam.checkpoint import record_in_config

            record_in_config(model, the_plan)  # HF: save_pretrained writes the plan into config.json
            return wrapper
        from fxparam.lowering.graph import lower_graph
        from fxparam.lowering.verify import verify_graph

        gm = lower_graph(model, the_plan, init=init, example_inputs=example_inputs)
        verify_graph(gm, model, example_inputs=example_inputs, raise_on_failure=True)
        return gm


def compile(  # noqa: A001 - mirrors torch.compile on purpose
    model: nn.Module,
    config: str | AnyConfig | Plan,
    *,
    example_inputs: Any = None,
    init: bool = True,
    inner: str | Callable[..., Any] = "inductor",
    options: dict[str, Any] | None = None,
    dynamic: bool | None = None,
    fullgraph: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Plan, re-initialise and ``torch.compile`` ``model`` with the plan applied in its graph.

    The model gets no forward hooks: the multipliers live in the compiled graph only, so
    calling the original module uncompiled raises instead of silently running without them.
    The plan is recorded on it, so ``fxparam.optimizer(compiled, ...)`` and
    ``fxparam.plan_of`` work, and transforming it again is refused.

    Args:
        model: the model (not already transformed).
        config: a config object or name, as for :func:`transform`; or a Plan.
        example_inputs: inputs for the analysis (optional for GPT / HF models).
        init: re-initialise weights per the plan (pass False before loading a checkpoint).
        inner: the backend after the rewrite ("inductor", "aot_eager", ...).
        options: Inductor options.
        dynamic: forwarded to ``torch.compile``.
        fullgraph: forwarded to ``torch.compile``; True by default, so that a graph break
            is an error at the first call instead of a forward split into frames the plan
            cannot follow (see :class:`fxparam.lowering.compile.PlanPass`).
        **kwargs: fields of the named config(s) (``base_width=...``).

    Returns:
        ``torch.compile(model, backend=fxparam.backend(plan, inner=inner))``.

    Raises:
        ConfigError, CaptureError, AnalysisError, PlanError: as for :func:`plan`.
        AlreadyTransformedError, LoweringError: as for :func:`transform`; LoweringError
            also when the plan needs something the compile lowering does not support.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> compiled = fxparam.compile(GPT(GPTConfig(width=64, depth=2)), "mup", base_width=32, inner="eager")
        >>> compiled(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 256])
        >>> opt = fxparam.optimizer(compiled, torch.optim.AdamW, lr=1e-2)
    """
    from fxparam.lowering.compile import lower_compile
    from fxparam.plan import unwrap

    the_plan = config if isinstance(config, Plan) else plan(unwrap(model), config, example_inputs=example_inputs,
                                                            **kwargs)
    return lower_compile(model, the_plan, init=init, inner=inner, options=options, dynamic=dynamic,
                         fullgraph=fullgraph)
