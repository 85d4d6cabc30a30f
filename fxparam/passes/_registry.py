"""Pass registry and the pass contract: preconditions, run, postconditions."""

from __future__ import annotations

from collections.abc import Callable

from fxparam._version import __version__
from fxparam.analysis.facts import Analysis
from fxparam.configs import AnyConfig, Composed
from fxparam.errors import FxparamError, PlanError
from fxparam.plan import ParamPlan, Plan

PassFn = Callable[[Analysis, AnyConfig, Plan], Plan]
_PASSES: dict[type, PassFn] = {}


def register_pass(config_type: type) -> Callable[[PassFn], PassFn]:
    """Register ``fn`` as the pass for ``config_type`` (exact type first, then base classes)."""

    def deco(fn: PassFn) -> PassFn:
        _PASSES[config_type] = fn
        return fn

    return deco


def unregister_pass(config_type: type) -> None:
    """Forget the pass of ``config_type`` (tests that register a toy parameterization clean up with it)."""
    _PASSES.pop(config_type, None)


def _lookup(config: AnyConfig) -> PassFn:
    for cls in type(config).__mro__:
        if cls in _PASSES:
            return _PASSES[cls]
    raise PlanError(
        f"no pass registered for {type(config).__name__}: decorate its pass with "
        f"@fxparam.passes.register_pass({type(config).__name__}) (see docs/internals.md, 'A new parameterization')"
    )


def identity_plan(analysis: Analysis) -> Plan:
    """A plan that changes nothing: every parameter kept, all multipliers 1."""
    params = {
        name: ParamPlan(role=info.role, tied_to=info.tied_to) for name, info in analysis.params.items()
    }
    return Plan(
        fxparam_version=__version__,
        model_class=analysis.model_class,
        width=analysis.width,
        depth=analysis.depth,
        params=params,
    )


def _check_post(plan: Plan, analysis: Analysis, name: str) -> None:
    missing = set(analysis.params) - set(plan.params)
    if missing:
        raise PlanError(f"pass {name} dropped parameters from the plan: {sorted(missing)[:5]}")
    for fqn, p in plan.params.items():
        for field in ("lr_mult", "sgd_lr_mult", "wd_mult", "eps_mult"):
            v = getattr(p, field)
            if not (v >= 0 and v < float("inf")):
                raise PlanError(f"pass {name} produced {field}={v} for {fqn}")
        if p.tied_to and p.tied_to not in plan.params:
            raise PlanError(f"pass {name}: {fqn} is tied to unknown {p.tied_to}")


def build_plan(analysis: Analysis, config: AnyConfig) -> Plan:
    """Run the passes for ``config`` (in order for a Composed config) and return the Plan."""
    configs = list(config.configs) if isinstance(config, Composed) else [config]
    # A composition without a width parameterization starts from "change nothing";
    # width parameterizations always run first, so later passes refine their rules.
    configs.sort(key=lambda c: 0 if c.width_rule else 1)
    plan = identity_plan(analysis)
    plan.config = config.model_dump(mode="json")
    done: list[str] = []
    for cfg in configs:
        name = type(cfg).__name__
        fn = _lookup(cfg)
        try:
            plan = fn(analysis, cfg, plan)
            _check_post(plan, analysis, name)
        except FxparamError as exc:
            if done:
                raise type(exc)(f"{exc} (in pass {name}, after {' -> '.join(done)})") from exc
            raise
        done.append(name)
        plan.passes.append(name)
    return plan
