"""Eager lowering: apply a Plan to the module itself (the default).

Validate everything first, then mutate: a failure leaves the model as it was.
Parameters keep their identity, ``state_dict`` keys and order are unchanged (checked:
:func:`check_promises` raises :class:`~fxparam.LoweringError`, also under ``python -O``),
and the plan is recorded on the model (:func:`fxparam.plan.attach`) so the optimizer
helpers find it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fxparam.errors import AlreadyTransformedError, LoweringError
from fxparam.lowering._hooks import InputScale, OutputScale, PopScale, PushScale, scale_linear
from fxparam.plan import PLAN_ATTR, Plan, attach, plan_of, unwrap

# PLAN_ATTR, plan_of and unwrap live in fxparam.plan; re-exported for 0.1 imports.
__all__ = ["PLAN_ATTR", "check_promises", "lower_eager", "plan_of", "prepare_weights", "unwrap"]

def _validate(model: nn.Module, plan: Plan) -> None:
    if getattr(model, PLAN_ATTR, None) is not None:
        prev = getattr(model, PLAN_ATTR)
        raise AlreadyTransformedError(
            f"{type(model).__name__} is already transformed ({' -> '.join(prev.passes)}); transforming again "
            "would double-scale it. Build a fresh model (and use init=False to load a checkpoint into it)."
        )
    from fxparam.lowering._rollback import check_model_shapes, fxparam_state

    carrying = fxparam_state(model)
    if carrying:  # the plan attribute was deleted, or another tool copied fxparam's state over
        raise AlreadyTransformedError(
            f"{type(model).__name__} carries fxparam's scaling already (on {carrying[:3]}) although it has no "
            "recorded plan: transforming again would double-scale it. Build a fresh model."
        )
    names = dict(model.named_parameters(remove_duplicate=False))
    not_float = [n for n, p in plan.params.items()
                 if n in names and not names[n].is_floating_point() and (p.init != "keep" or n in plan.masks)]
    if not_float:
        raise LoweringError(
            f"the plan re-initialises or masks {not_float[:3]}, which are {names[not_float[0]].dtype} "
            "(not floating point): fxparam can only reparameterize floating-point parameters. Register them "
            "as buffers (register_buffer) or exclude them with an override (role 'vector', init 'keep')."
        )
    missing = [n for n in plan.params if n not in names]
    extra = [n for n in names if n not in plan.params]
    if missing or extra:
        raise LoweringError(
            f"the plan does not match {type(model).__name__}: parameters missing from the model "
            f"{missing[:5]}, parameters missing from the plan {extra[:5]}. Plans are per model architecture: "
            "rebuild the plan for this model."
        )
    check_model_shapes(model, plan)  # same names, other shapes: another width or depth
    modules = dict(model.named_modules())
    for name in [*plan.output_multipliers, *plan.input_multipliers]:
        if name not in modules:
            raise LoweringError(f"the plan scales module {name!r}, which {type(model).__name__} does not have")
    for name, site in plan.attention.items():
        if isinstance(modules.get(name), nn.MultiheadAttention) and site.scale != site.previous:
            raise LoweringError(
                f"cannot set the attention logit scale of {name!r} (nn.MultiheadAttention): it computes "
                f"1/sqrt(head_dim) internally (a fused kernel in eval mode), so the planned {site.scale:.6g} would "
                "not be in effect. Pass attention='sp' in the config to keep 1/sqrt(d_head), or compute attention "
                "with F.scaled_dot_product_attention in your own module."
            )
        if site.attr is not None:
            owner = modules.get(site.attr_module or name)
            if owner is None or not isinstance(getattr(owner, site.attr, None), float):
                raise LoweringError(f"attention module {site.attr_module or name!r} has no float attribute {site.attr!r}")
        elif site.kind != "sdpa" and site.scale != site.previous:  # an unchanged scale needs no setting
            raise LoweringError(
                f"cannot set the attention logit scale of {name!r}: it computes attention by hand and keeps "
                "its scale in no attribute fxparam knows. Pass attention='sp' in the config to keep "
                "1/sqrt(d_head), or give the module a float `scaling` attribute that its forward uses."
            )
        elif name not in modules:
            raise LoweringError(f"the plan sets attention on {name!r}, which the model does not have")
    if plan.masks:
        from fxparam.lowering.masks import validate_masks

        validate_masks(model, plan)


@torch.no_grad()
def _reinit(model: nn.Module, plan: Plan) -> None:
    names = dict(model.named_parameters(remove_duplicate=False))
    for fqn, p in plan.params.items():
        if p.tied_to:
            continue
        param = names[fqn]
        if p.init == "normal":
            param.normal_(0.0, p.init_std)
        elif p.init == "zeros":
            param.zero_()


def prepare_weights(model: nn.Module, plan: Plan, *, init: bool) -> None:
    """The weight side of a plan, shared by every lowering: SμPar masks, then the re-init.

    Args:
        model: the module (for the graph and compile lowerings, the module whose
            Parameters the GraphModule / compiled graph use).
        plan: the plan.
        init: re-initialise per the plan (then re-zero masked entries); False masks the
            current values only.
    """
    if plan.masks:
        from fxparam.lowering.masks import apply_masks

        apply_masks(model, plan, init=init)
    if init:
        _reinit(model, plan)
        if plan.masks:
            from fxparam.lowering.masks import enforce_masks

            enforce_masks(model)


def lower_eager(model: nn.Module, plan: Plan, *, init: bool = True) -> nn.Module:
    """Apply ``plan`` to ``model`` in place and return it.

    Args:
        model: the module (not transformed before).
        plan: a plan built for this architecture.
        init: re-initialise the weights per the plan.

    Returns:
        ``model`` itself, with the plan recorded on it (:func:`fxparam.plan.attach`).

    Raises:
        AlreadyTransformedError: ``model`` already carries a plan.
        LoweringError: the plan does not match the model, a site cannot be scaled, or a
            promise (state_dict keys, Parameter identity) would break (:func:`check_promises`).
        GNSError: a planned norm swap is impossible.
    """
    _validate(model, plan)
    keys_before = list(model.state_dict().keys())
    ids_before = [id(p) for p in model.parameters()]

    if plan.norm_swaps:
        from fxparam.lowering.norm_swap import swap_norms  # validates all norms before swapping any

        swap_norms(model, plan.norm_swaps)
    modules = dict(model.named_modules())
    for name, site in plan.attention.items():
        if site.attr is not None:
            setattr(modules[site.attr_module or name], site.attr, float(site.scale))
        elif site.kind == "sdpa" and site.scale != site.previous:  # an unchanged scale needs no override
            from fxparam.lowering import sdpa

            sdpa.install()
            modules[name].register_forward_pre_hook(PushScale(site.scale))
            modules[name].register_forward_hook(PopScale(), always_call=True)
    for name, factor in plan.output_multipliers.items():
        if not scale_linear(modules[name], out=factor):
            modules[name].register_forward_hook(OutputScale(factor, name))
    for name, factor in plan.input_multipliers.items():
        if not scale_linear(modules[name], inp=factor):
            modules[name].register_forward_pre_hook(InputScale(factor, name))
    prepare_weights(model, plan, init=init)
    check_promises(model, plan, keys_before, ids_before)
    attach(model, plan)
    return model


def check_promises(model: nn.Module, plan: Plan, keys_before: list[str], ids_before: list[int]) -> None:
    """The eager lowering's promises, checked after it ran (also under ``python -O``).

    Args:
        model: the lowered module.
        plan: the plan applied to it.
        keys_before: ``list(model.state_dict())`` before the lowering.
        ids_before: ``[id(p) for p in model.parameters()]`` before the lowering.

    Raises:
        LoweringError: ``state_dict`` keys changed or were reordered (beyond the masks
            ``SuPar(store_masks=True)`` stores), a stored mask is missing, or a Parameter
            was replaced by another object (optimizers and checkpoints would lose it).
    """
    # masks add state_dict keys only when stored (SuPar(store_masks=True)), and only those keys
    added: set[str] = set()
    if plan.masks:
        from fxparam.lowering.masks import stored_mask_keys

        added = set(stored_mask_keys(plan))
    keys_after = list(model.state_dict().keys())
    kept = [k for k in keys_after if k not in added]
    where = type(model).__name__
    if kept != keys_before:
        changed = sorted(set(kept) ^ set(keys_before)) or ["(same keys, new order)"]
        raise LoweringError(
            f"fxparam's eager lowering changed the state_dict keys of {where}: {changed[:5]}. It promises the "
            "keys and their order are unchanged (checkpoints must load both ways); this is a bug in fxparam or a "
            "module that builds its state_dict from mutable attributes - report it, or use lowering='graph'."
        )
    missing = sorted(added - set(keys_after))
    if missing:
        raise LoweringError(
            f"fxparam's stored SuPar masks are missing from {where}'s state_dict: {missing[:5]}. "
            "Use SuPar(store_masks=False) (masks re-derived from (seed, FQN)) or report the model."
        )
    ids_after = [id(p) for p in model.parameters()]
    if ids_after != ids_before:
        names = [n for (n, p), old in zip(model.named_parameters(), ids_before, strict=False) if id(p) != old]
        raise LoweringError(
            f"fxparam's eager lowering replaced Parameter(s) of {where} ({names[:5] or 'count changed'}): it "
            "promises every Parameter keeps its identity (an optimizer built before would train stale tensors)."
        )
