"""Compile lowering: the plan applied to Dynamo's captured graph, then Inductor.

Three entry points, one rewrite (:func:`fxparam.lowering.graph.apply_plan_to_graph`):

- :func:`compile_pass` -> :class:`PlanPass`, an Inductor ``CustomGraphPass`` for the
  ``pre_grad_custom_pass`` option: ``torch.compile(model, options={"pre_grad_custom_pass":
  fxparam.compile_pass(plan)})``.  Its ``uuid()`` hashes the plan's fingerprint,
  fxparam's version and the source of the rewrite, so Inductor's FX-graph and AOTAutograd
  caches never hand one plan's compiled artifact to another (in torch 2.13 a pre-grad pass
  with a uuid runs *after* the AOTAutograd cache lookup, so the uuid is the only thing that
  tells two plans apart; ``tests/lowering/test_lowering_inductor.py`` shows a plan-blind key
  reusing the wrong artifact).
- :func:`backend` -> a Dynamo backend: ``torch.compile(model, backend=fxparam.backend(plan))``.
  With ``inner="inductor"`` it calls ``compile_fx`` with the pass above; with any other
  inner backend (``"aot_eager"``...) it rewrites the graph itself and hands it on.
- :func:`lower_compile` (behind ``fxparam.compile``, which builds the plan) does it all:
  applies the plan's weight side once, eagerly (SμPar masks on the Parameters, the
  re-init), records the plan on the model (so ``fxparam.optimizer`` works) and returns
  ``torch.compile(model, backend=backend(plan))``.

The rewrite runs on the forward graph *before* AOT autograd, so gradients follow from the
rewritten forward.  Math-changing rewrites never run post-grad: :class:`PlanPass` refuses a
graph that AOT autograd has already traced (``primals_*`` / ``tangents_*`` inputs).

A Dynamo backend sees graphs, not the module, so :func:`backend` needs the Plan (built by
``fxparam.plan(model, config)``); a config alone is refused with that fix.

Graph breaks: a break in the model's own ``forward`` (between blocks) is fine - each graph
gets the part of the plan it contains (``PlanPass.applied`` / ``missing()`` tell).  A break
*inside* a submodule makes Dynamo compile that submodule as a frame of its own, whose names
are relative to it (and may leave the enclosing forward uncompiled): the pass refuses such a
graph with a :class:`~fxparam.LoweringError` rather than apply part of the plan.
``fxparam.compile`` uses ``fullgraph=True``, so a break is reported at the first call.  Models
that need graph breaks use the eager lowering, whose hooks survive them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn as nn

from fxparam.errors import ConfigError, LoweringError
from fxparam.lowering.graph import GraphRewrite, apply_plan_to_graph, check_supported, frame_parameter_names
from fxparam.plan import Plan, attach, unwrap

__all__ = ["PlanBackend", "PlanPass", "backend", "compile_pass", "lower_compile", "prepare_model"]

_SOURCES = (__file__, str(Path(__file__).with_name("graph.py")))  # the rewrite's code is part of the key


def _as_plan(plan: Plan | str | bytes, where: str) -> Plan:
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, bytes)) and str(plan if isinstance(plan, str) else plan.decode()).lstrip().startswith("{"):
        return Plan.from_json(plan)
    raise ConfigError(
        f"{where} needs the Plan of the model (a Dynamo backend never sees the module, so it cannot build "
        f"one from a config): got {type(plan).__name__} {plan!r:.60}. Build it first: "
        "plan = fxparam.plan(model, 'mup', base_width=...); torch.compile(model, backend=fxparam.backend(plan)) "
        "- or use fxparam.compile(model, 'mup', base_width=...), which also re-initialises the weights."
    )


def _register_with_inductor() -> None:
    """Make :class:`PlanPass` an Inductor ``CustomGraphPass`` (a virtual subclass).

    Registered at the first ``PlanPass`` rather than subclassed at import, so that importing
    fxparam does not import Inductor and Dynamo (about a second) for users who never compile.
    """
    from torch._inductor.custom_graph_pass import CustomGraphPass

    if not issubclass(PlanPass, CustomGraphPass):
        CustomGraphPass.register(PlanPass)


class PlanPass:
    """Inductor pre-grad pass applying a plan's forward changes to Dynamo's torch-IR graph.

    Attributes:
        plan: the plan.
        applied: plan sites (``Plan.forward_sites()`` labels) applied so far, over all
            graphs this pass has seen (one per region between graph breaks).
        rewrites: one :class:`~fxparam.lowering.graph.GraphRewrite` per graph rewritten.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> plan = fxparam.plan(model, "mup", base_width=32)
        >>> the_pass = PlanPass(plan)
        >>> compiled = torch.compile(model, options={"pre_grad_custom_pass": the_pass})  # compiles at first call
        >>> len(the_pass.uuid())  # the Inductor cache key: plan fingerprint + fxparam version + this code
        64
    """

    def __init__(self, plan: Plan | str) -> None:
        _register_with_inductor()
        self.plan = _as_plan(plan, "fxparam.compile_pass")
        check_supported(self.plan, "compile")
        self.applied: set[str] = set()
        self.rewrites: list[GraphRewrite] = []

    def __call__(self, graph: fx.Graph) -> None:
        """Rewrite ``graph`` in place (Inductor lints and recompiles after its pre-grad passes)."""
        names = [n.name for n in graph.nodes if n.op == "placeholder"]
        if any(n.startswith(("primals_", "tangents_")) for n in names):
            raise LoweringError(
                "fxparam.compile_pass ran on a graph AOT autograd has already traced (it has primals/tangents "
                "inputs): a math-changing rewrite after autograd leaves the gradients wrong. Register it as "
                "options={'pre_grad_custom_pass': fxparam.compile_pass(plan)}, never as a post-grad or joint pass."
            )
        self._check_frame(graph)
        rewrite = apply_plan_to_graph(graph, self.plan, partial=True)
        self.rewrites.append(rewrite)
        self.applied |= rewrite.applied

    def _check_frame(self, graph: fx.Graph) -> None:
        """Refuse a graph of a nested frame: its module names are relative to a submodule.

        After a graph break inside a submodule (or a loop over blocks), Dynamo compiles that
        submodule's ``forward`` as a frame of its own, whose ``self`` is the submodule: its
        names (``attn.proj``) no longer say which block they belong to, and the enclosing
        frame may run uncompiled.  A plan applied there would be silently incomplete.
        """
        roots = {k.split(".", 1)[0] for k in self.plan.params}
        foreign = [n for n in frame_parameter_names(graph, roots) if n not in self.plan.params]
        if foreign:
            raise LoweringError(
                f"fxparam compile lowering: Dynamo handed the backend a graph whose parameters are not the "
                f"plan's ({foreign[:3]}, relative to a submodule): a graph break inside a submodule made Dynamo "
                "compile that submodule as its own frame, so fxparam cannot tell which instance it is (and the "
                "enclosing forward may run uncompiled, without the plan). Find the break with "
                "torch._dynamo.explain(model)(...) and remove it, compile with fullgraph=True to be told, or use "
                "the eager lowering (fxparam.transform(model, ...), then torch.compile(model)), whose hooks "
                "survive graph breaks."
            )

    def uuid(self) -> str:
        """Cache key: hash of the plan's fingerprint, fxparam's version and this rewrite's source."""
        from torch._inductor.custom_graph_pass import get_hash_for_files

        from fxparam._version import __version__

        text = f"fxparam {__version__} plan {self.plan.fingerprint()} code {get_hash_for_files(_SOURCES)!r}"
        return hashlib.sha256(text.encode()).hexdigest()

    def missing(self) -> list[str]:
        """Plan sites (``Plan.forward_sites()``) not applied in any graph so far (call after the first compiled call)."""
        return sorted(self.plan.forward_sites() - self.applied)

    def __repr__(self) -> str:
        return f"PlanPass({self.plan.model_class} [{' -> '.join(self.plan.passes)}], {self.plan.fingerprint()})"


def compile_pass(plan: Plan | str) -> PlanPass:
    """An Inductor pre-grad custom pass that applies ``plan`` (cache key: plan + fxparam version).

    Args:
        plan: from ``fxparam.plan(model, config)`` (or its JSON).

    Returns:
        A :class:`PlanPass` for ``options={"pre_grad_custom_pass": ...}``.  It does not
        touch weights: re-initialise them (and install SμPar masks) once with
        ``fxparam.lowering.compile.prepare_model``.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> plan = fxparam.plan(model, "mup", base_width=32)
        >>> prepare_model(model, plan)
        >>> compiled = torch.compile(model, options={"pre_grad_custom_pass": compile_pass(plan)})
    """
    return PlanPass(plan)


class PlanBackend:
    """A Dynamo backend ``(gm, example_inputs) -> callable`` applying a plan, then ``inner``.

    Attributes:
        plan_pass: the :class:`PlanPass` doing the rewrite (see its ``applied``/``missing()``).
        inner: "inductor", another registered backend name, or a backend callable.
        config_patches: extra Inductor options (``inner="inductor"`` only).

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> be = backend(fxparam.plan(model, "mup", base_width=32), inner="eager")
        >>> out = torch.compile(model, backend=be)(torch.zeros(2, 8, dtype=torch.long))
        >>> be.plan_pass.missing()  # every plan entry was found in the captured graph(s)
        []
    """

    def __init__(self, plan: Plan | str, inner: str | Callable[..., Any] = "inductor",
                 config_patches: dict[str, Any] | None = None) -> None:
        self.plan_pass = PlanPass(plan)
        self.inner = inner
        self.config_patches = dict(config_patches or {})
        if self.config_patches and inner != "inductor":
            raise ConfigError(f"Inductor options were given but the inner backend is {inner!r}, not 'inductor'")

    @property
    def plan(self) -> Plan:
        return self.plan_pass.plan

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        if self.inner == "inductor":
            from torch._inductor import config as inductor_config
            from torch._inductor.compile_fx import compile_fx
            from torch._inductor.custom_graph_pass import get_custom_graph_passes

            patches = dict(self.config_patches)
            others = get_custom_graph_passes(patches.pop("pre_grad_custom_pass", inductor_config.pre_grad_custom_pass))
            patches["pre_grad_custom_pass"] = [self.plan_pass, *(p for p in others if p is not self.plan_pass)]
            return cast(Callable[..., Any], compile_fx(gm, list(example_inputs), config_patches=patches))
        self.plan_pass(gm.graph)
        gm.recompile()
        inner = torch._dynamo.lookup_backend(self.inner) if isinstance(self.inner, str) else self.inner
        return cast(Callable[..., Any], inner(gm, list(example_inputs)))

    def __repr__(self) -> str:
        return f"fxparam.backend({self.plan_pass!r}, inner={self.inner!r})"


def backend(plan: Plan | str, *, inner: str | Callable[..., Any] = "inductor",
            options: dict[str, Any] | None = None) -> PlanBackend:
    """A Dynamo backend that applies ``plan`` to the captured graph, then compiles it.

    The rewrite is pre-grad (before AOT autograd), so gradients are those of the rewritten
    forward.  Weights are not touched: re-initialise them once, eagerly, with
    ``fxparam.lowering.compile.prepare_model(model, plan)`` - or use ``fxparam.compile``.

    Args:
        plan: from ``fxparam.plan(model, config)`` (or its JSON); a config is refused
            (a backend never sees the module).
        inner: "inductor" (default; the plan runs as an Inductor pre-grad pass whose uuid
            is the cache key), or any other Dynamo backend name or callable
            (``"aot_eager"`` is handy in tests).
        options: Inductor options, as ``torch.compile(options=...)``.

    A frame Dynamo does not compile (its recompile limit, a skipped frame) runs without the
    plan and without this backend seeing it: check ``backend.plan_pass.missing()`` after
    the first step, or use ``fxparam.compile``, whose guard raises when the model runs
    uncompiled.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> plan = fxparam.plan(model, "mup", base_width=32)
        >>> prepare_model(model, plan)
        >>> compiled = torch.compile(model, backend=backend(plan))  # Inductor compiles at the first call
    """
    return PlanBackend(plan, inner, options)


def prepare_model(model: nn.Module, plan: Plan, *, init: bool = True) -> None:
    """The weight side of ``plan`` on ``model``, in place: SμPar masks, then the re-init.

    What the eager lowering does to the weights (``fxparam.lowering.eager.prepare_weights``);
    call it once before ``torch.compile(model, backend=fxparam.backend(plan))``
    (:func:`lower_compile` does).

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> plan = fxparam.plan(model, "mup", base_width=32)
        >>> prepare_model(model, plan)
        >>> float(model.lm_head.weight.detach().std()) < 0.03  # re-drawn with the plan's init std
        True
    """
    from fxparam.lowering.eager import prepare_weights

    prepare_weights(unwrap(model), plan, init=init)


class _CompiledOnly:
    """Forward pre-hook of a model lowered by :func:`lower_compile`: its multipliers only exist compiled."""

    fxparam_hook = True

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if not torch.compiler.is_compiling():
            raise LoweringError(
                f"{type(module).__name__} was lowered by fxparam.compile: its multipliers exist only in the "
                "compiled graph, and this call ran it uncompiled (it was called directly, or Dynamo fell back "
                "to eager, e.g. at its recompile limit). Call the module fxparam.compile returned, or use "
                "fxparam.transform(model, ...) for a model that is right both eagerly and compiled."
            )


def lower_compile(
    model: nn.Module,
    plan: Plan | str,
    *,
    init: bool = True,
    inner: str | Callable[..., Any] = "inductor",
    options: dict[str, Any] | None = None,
    dynamic: bool | None = None,
    fullgraph: bool = True,
) -> nn.Module:
    """Re-initialise and ``torch.compile`` ``model`` with ``plan`` applied in its graph.

    The lowering behind ``fxparam.compile`` (which builds the plan from a config first).
    The model gets no forward hooks: the multipliers live in the compiled graph only, so
    calling the original module uncompiled raises instead of silently running without them.
    The plan is recorded on it (:func:`fxparam.plan.attach`), so ``fxparam.optimizer(compiled,
    ...)`` and ``fxparam.plan_of`` work, and transforming it again is refused.

    Args:
        model: the model (not already transformed), or a wrapper of it.
        plan: from ``fxparam.plan(model, config)`` (or its JSON); a config is refused.
        init: re-initialise weights per the plan (pass False before loading a checkpoint).
        inner: the backend after the rewrite ("inductor", "aot_eager", ...).
        options: Inductor options.
        dynamic: forwarded to ``torch.compile``.
        fullgraph: forwarded to ``torch.compile``; True by default, so that a graph break
            is an error at the first call instead of a forward split into frames the plan
            cannot follow.  With False, a break between blocks (at the top level) is fine; a
            break inside a submodule is refused by the pass (see :class:`PlanPass`).

    Returns:
        ``torch.compile(model, backend=fxparam.backend(plan, inner=inner))``.

    Raises:
        ConfigError: ``plan`` is not a Plan (or plan JSON).
        AlreadyTransformedError: ``model`` was transformed before.
        LoweringError: the plan does not match the model, or needs what this lowering lacks.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> compiled = lower_compile(model, fxparam.plan(model, "mup", base_width=32), inner="eager")
        >>> compiled(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 256])
        >>> opt = fxparam.optimizer(compiled, torch.optim.AdamW, lr=1e-2)
    """
    from fxparam.lowering.eager import _validate

    inner_model = unwrap(model)
    the_plan = _as_plan(plan, "fxparam.lowering.compile.lower_compile")
    # GNS norm swaps change module classes, not the graph: done here, before tracing (below).
    graph_plan = the_plan.model_copy(update={"norm_swaps": []}) if the_plan.norm_swaps else the_plan
    check_supported(graph_plan, "compile")
    _validate(inner_model, the_plan)
    be = backend(graph_plan, inner=inner, options=options)
    prepare_model(inner_model, the_plan, init=init)
    inner_model.register_forward_pre_hook(_CompiledOnly())
    attach(inner_model, the_plan)
    compiled = cast(nn.Module, torch.compile(model, backend=be, dynamic=dynamic, fullgraph=fullgraph))
    if the_plan.norm_swaps:
        from fxparam.lowering.norm_swap import PrepareSinks, swap_norms

        swap_norms(inner_model, the_plan.norm_swaps)
        compiled.register_forward_pre_hook(PrepareSinks(inner_model), with_kwargs=True)  # runs eagerly
    return compiled


compile = lower_compile  # noqa: A001 - 0.1 name; takes a Plan (fxparam.compile takes a config)
