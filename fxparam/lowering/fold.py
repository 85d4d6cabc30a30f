"""Fold a transformed model into plain weights: an ordinary model of the same class, no hooks.

Every forward multiplier of the plan is absorbed into the weights of the module it acts on:

- output multiplier ``f`` on a Linear (``y = f (W x + b)``): ``W <- f W``, ``b <- f b`` (residual
  branch multipliers 1/m_L^alpha sit on the branch's last matmul, CompleteP / Dey et al. 2025);
- input multiplier ``f`` on a Linear (``y = W (f x) + b``, the muP readout alpha_out/m_d,
  Yang et al. 2021 Table 3): ``W <- f W``;
- output multiplier ``f`` on an Embedding (alpha_in): ``W <- f W``;
- attention logit scale ``s`` where the module's own is ``s0`` (muP 1/d vs 1/sqrt(d)): the
  query projection's rows are multiplied by ``s / s0`` (``q_proj`` / ``query`` / ``to_q``, or the
  first third of a fused ``qkv`` / ``c_attn`` / ``in_proj``), the module's scale attribute
  returns to ``s0`` - the value its class computes from its config, so a plain
  ``from_pretrained`` rebuilds the same module.

``ScaledLinear`` goes back to ``nn.Linear``, swapped norms (GNS) to their own class; hooks,
SμPar mask guards and mask buffers go (the masked entries are zero in the weights; a
folded model is for inference/export: training it would not keep the masks), and so do
the recorded plan and ``config.fxparam_plan``.

A weight shared by two uses with different factors (a tied embedding/readout: alpha_in
on one side, alpha_out/m_d on the other) cannot absorb both: it is listed in the error,
and ``untie=True`` gives the readout its own copy (and sets ``config.tie_word_embeddings =
False`` on Hugging Face models).  Whatever is folded is checked: the folded model's
outputs must equal the transformed model's (fp32, relative 1e-4) on example inputs, or
:class:`~fxparam.LoweringError` is raised and the user's model is untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import LoweringError

__all__ = ["fold"]

_QUERY = ("q_proj", "query", "q", "to_q", "wq", "q_lin", "query_proj")
_FUSED = ("qkv", "c_attn", "Wqkv", "qkv_proj", "query_key_value_fused", "in_proj")


@dataclass
class _Factors:
    """Per-row factors of each Parameter (by id), and which uses asked for them."""

    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    uses: dict[int, list[tuple[str, torch.Tensor]]] = field(default_factory=dict)
    params: dict[int, nn.Parameter] = field(default_factory=dict)

    axis: dict[int, int] = field(default_factory=dict)

    def scale(self, use: str, param: nn.Parameter | None, factor: torch.Tensor | float, axis: int = 0) -> None:
        """Multiply ``param``'s slices along ``axis`` (its output features) by ``factor``."""
        if param is None:
            return
        if param.ndim and axis:
            axis = axis % param.ndim
        rows = torch.ones(param.shape[axis], dtype=torch.float64) if param.ndim else torch.ones((), dtype=torch.float64)
        rows = rows * (factor if isinstance(factor, torch.Tensor) else float(factor))
        key = id(param)
        self.params[key] = param
        if self.axis.setdefault(key, axis) != axis:
            raise LoweringError(f"fxparam.fold: {use} scales one weight along two axes")
        self.uses.setdefault(key, []).append((use, rows))


def _plain_class(cls: type) -> type:
    for base in cls.__mro__:
        if not base.__module__.startswith(("fxparam.lowering", "fxparam.kernels")):
            return base
    return nn.Module


def _is_conv1d(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2, GPT): ``y = x @ W + b`` with ``W`` of shape (in, out)."""
    return type(m).__name__ == "Conv1D" and isinstance(getattr(m, "weight", None), torch.Tensor) \
        and m.weight.ndim == 2 and getattr(m, "nf", None) == m.weight.shape[1]


def _out_features(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.out_features
    if _is_conv1d(m):
        return int(m.weight.shape[1])
    return None


def _query_rows(
    attn: nn.Module, ratio: float, head_dim: int | None = None
) -> tuple[nn.Module, torch.Tensor, int] | tuple[None, None, int]:
    """(module holding the query projection, factor per output feature of its weight, weight axis of
    the output features) in an attention module.

    Layouts: a separate query Linear; a fused ``[q; k; v]`` Linear or ``Conv1D`` (GPT-2's
    ``c_attn``: the first third of its output columns is q); GPT-NeoX's ``query_key_value``,
    laid out per head as ``[q_h; k_h; v_h]`` (``view(..., heads, 3 * head_dim)``); the packed
    ``in_proj_weight`` of ``nn.MultiheadAttention``.  A wrong layout guess cannot pass silently:
    :func:`fold` compares the folded outputs with the transformed model's.
    """
    for name in _QUERY:
        lin = getattr(attn, name, None)
        n = _out_features(lin) if isinstance(lin, nn.Module) else None
        if n is not None:
            return lin, torch.full((n,), ratio, dtype=torch.float64), (1 if _is_conv1d(lin) else 0)
    lin = getattr(attn, "query_key_value", None)
    n = _out_features(lin) if isinstance(lin, nn.Module) else None
    if n is not None and head_dim and n % (3 * head_dim) == 0:
        rows = torch.ones(n // (3 * head_dim), 3, head_dim, dtype=torch.float64)
        rows[:, 0, :] = ratio
        return lin, rows.reshape(-1), (1 if _is_conv1d(lin) else 0)
    for name in _FUSED:
        lin = getattr(attn, name, None)
        n = _out_features(lin) if isinstance(lin, nn.Module) else None
        if n is not None and n % 3 == 0:
            rows = torch.ones(n, dtype=torch.float64)
            rows[: n // 3] = ratio
            return lin, rows, (1 if _is_conv1d(lin) else 0)
    if isinstance(attn, nn.MultiheadAttention) and attn.in_proj_weight is not None:
        rows = torch.ones(3 * attn.embed_dim, dtype=torch.float64)
        rows[: attn.embed_dim] = ratio
        return attn, rows, 0
    return None, None, 0


def _float_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _float_tensors(v)]
    return []


@torch.no_grad()
def _absorbing_parameter(
    model: nn.Module, name: str, module: nn.Module, f_out: float, f_in: float, args: tuple, kwargs: dict,
    captured: dict[str, tuple[tuple, dict]],
) -> nn.Parameter | None:
    """The one parameter of ``module`` whose scaling by ``f_out * f_in`` reproduces ``f_out * module(f_in * x)``.

    For a module fold does not know (an MoE's batched experts, whose output is linear in
    ``down_proj``; a router whose logits are linear in its weight), each floating-point parameter
    is tried on the module's own input from one forward of the model (eval, no grad): scaled,
    the module's plain output must equal the planned one (relative 1e-5).  None if no
    parameter does (nonlinear in all of them, or several weights would have to change).
    """
    from fxparam.lowering.verify import _Replay

    if not captured:
        def recorder(fqn: str) -> Any:
            def hook(mod: nn.Module, a: tuple, k: dict) -> None:
                captured.setdefault(fqn, (a, k))

            return hook

        handles = [m.register_forward_pre_hook(recorder(n), with_kwargs=True, prepend=True)
                   for n, m in model.named_modules()]
        try:
            _outputs(model, args, kwargs)
        finally:
            for h in handles:
                h.remove()
    if name not in captured:
        return None
    call_args, call_kwargs = captured[name]
    training = module.training
    module.eval()
    try:
        replay = _Replay(module, [False])
        expected = _float_tensors(replay.realize(call_args, call_kwargs, out=f_out, inp=f_in))
        for p in module.parameters():
            if not p.is_floating_point() or not expected:
                continue
            saved = p.detach().clone()
            p.mul_(f_out * f_in)
            try:
                got = _float_tensors(replay.realize(call_args, call_kwargs))
            finally:
                p.copy_(saved)
            if len(got) == len(expected) and all(
                a.shape == b.shape and float((a - b).abs().max()) <= 1e-5 * (float(b.abs().max()) or 1.0)
                for a, b in zip(got, expected, strict=True)
            ):
                return p
    finally:
        module.train(training)
    return None


def _outputs(model: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    from fxparam.lowering.verify import _first_tensor, _logits

    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = _first_tensor(_logits(model(*args, **kwargs)))
    finally:
        for m, flag in training.items():
            m.training = flag
    if out is None:
        raise LoweringError(f"fxparam.fold: {type(model).__name__}'s output is not a tensor to compare")
    return out.float()


def fold(model: nn.Module, *, untie: bool = False, example_inputs: Any = None, inplace: bool = False) -> nn.Module:
    """An ordinary model of the same class whose weights absorb every fxparam multiplier.

    Args:
        model: an eager-transformed model (wrappers are looked through).
        untie: give a tied readout its own weight when the tied uses need different factors
            (the folded model then has one more Parameter; HF configs get
            ``tie_word_embeddings=False``).
        example_inputs: inputs for the equality check (optional for GPT / HF models).
        inplace: fold ``model`` itself instead of a deep copy (all or nothing: if the fold is
            refused or its check fails, ``model`` is restored exactly - weights, Parameter
            identity and ties, classes, hooks, plan, ``config``).

    Returns:
        The folded model (a copy unless ``inplace``): same class, no fxparam hooks or classes,
        no plan; outputs equal the transformed model's within fp32 tolerance.

    Raises:
        LoweringError: the model was not transformed (or its plan was deleted), or is a
            graph lowering's GraphModule; a multiplier that cannot be absorbed
            (listed, with ``untie=True`` where tying is the reason); or folded outputs that
            differ from the transformed model's.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = fxparam.transform(GPT(GPTConfig(width=64, depth=2)), "completep", base_width=32, base_depth=1)
        >>> plain = fxparam.fold(model)  # HF models: plain.save_pretrained(...) loads with plain transformers
        >>> type(plain).__name__, hasattr(plain, "_fxparam_plan"), type(plain.blocks[0].attn.proj).__name__
        ('GPT', False, 'Linear')
    """
    from fxparam.lowering.verify import _probe_inputs
    from fxparam.plan import plan_of, unwrap

    source = unwrap(model)
    if isinstance(source, torch.fx.GraphModule):
        raise LoweringError(
            "fxparam.fold folds an eager-transformed model; this GraphModule (lowering='graph') holds the "
            "multipliers as graph nodes. Apply its plan eagerly to the original module and fold that: "
            "fxparam.fold(fxparam.apply_plan(model, fxparam.plan_of(gm)))."
        )
    from fxparam.lowering._rollback import require_plan

    require_plan(source, "fxparam.fold")
    plan = plan_of(source)
    args, kwargs = _probe_inputs(source, example_inputs)
    reference = _outputs(source, args, kwargs)
    if not inplace:
        return _fold_into(copy.deepcopy(source), plan, args, kwargs, reference, untie)
    # in place: all or nothing - a refusal or a failed equality check leaves the user's model as it was
    from fxparam.lowering._rollback import Snapshot

    snapshot = Snapshot(source)
    config = getattr(source, "config", None)
    saved_config = dict(vars(config)) if hasattr(config, "__dict__") else None  # fxparam_plan, tie_word_embeddings
    try:
        return _fold_into(source, plan, args, kwargs, reference, untie)
    except BaseException:
        snapshot.restore()
        if saved_config is not None:
            vars(config).clear()
            vars(config).update(saved_config)
        raise


def _fold_into(
    out: nn.Module, plan: Any, args: tuple, kwargs: dict, reference: torch.Tensor, untie: bool
) -> nn.Module:
    """Absorb ``plan``'s multipliers into ``out``'s weights and strip fxparam's state (see :func:`fold`)."""
    from fxparam.lowering._hooks import InputScale, OutputScale, PopScale, PushScale, ScaledLinear
    from fxparam.lowering.verify import _state_factors
    from fxparam.plan import PLAN_ATTR

    modules = dict(out.named_modules())

    factors = _Factors()
    problems: list[str] = []
    captured: dict[str, tuple[tuple, dict]] = {}
    for name, m in modules.items():
        f_out, f_in, _pushed, _ = _state_factors(m)
        if f_out == 1.0 and f_in == 1.0:
            continue
        if isinstance(m, nn.Linear):
            factors.scale(name, m.weight, f_out * f_in)
            factors.scale(name, m.bias, f_out)
        elif _is_conv1d(m):  # y = x @ W + b, W (in, out): the factor is per output column
            factors.scale(name, m.weight, f_out * f_in, axis=1)
            factors.scale(name, m.bias, f_out)
        elif isinstance(m, nn.Embedding) and f_in == 1.0:
            factors.scale(name, m.weight, f_out)
        else:
            found = _absorbing_parameter(out, name, m, f_out, f_in, args, kwargs, captured)
            if found is not None:
                factors.scale(name, found, f_out * f_in)
                continue
            problems.append(f"{name} ({type(m).__name__}): x{f_out:.6g} on its output, x{f_in:.6g} on its input - "
                            "no single parameter of it absorbs the multiplier (Linear, Conv1D and Embedding "
                            "modules always do; others, e.g. MoE experts, when their output is linear in one weight)")
    attr_resets: list[tuple[nn.Module, str, float]] = []
    for name, site in plan.attention.items():
        if site.previous == 0 or abs(site.scale / site.previous - 1.0) < 1e-12:
            continue
        ratio = site.scale / site.previous
        holder, rows, axis = _query_rows(modules[name], ratio, site.head_dim)
        if holder is None:
            problems.append(f"{name}: attention scale {site.previous:.6g} -> {site.scale:.6g} but no query "
                            f"projection found (a child Linear or Conv1D named one of {_QUERY}, a fused "
                            f"{_FUSED}, or a per-head 'query_key_value')")
            continue
        if isinstance(holder, nn.MultiheadAttention):
            factors.scale(name, holder.in_proj_weight, rows)
            factors.scale(name, holder.in_proj_bias, rows)
        else:
            factors.scale(name, holder.weight, rows, axis=axis)
            factors.scale(name, holder.bias, rows)
        if site.attr is not None:
            attr_resets.append((modules[site.attr_module or name], site.attr, float(site.previous)))

    # a Parameter used at several sites: one factor for all, or untie
    owners = {id(p): [(mn, pn) for mn, mod in modules.items() for pn, q in mod._parameters.items() if q is p]
              for p in factors.params.values()}
    for key, uses in list(factors.uses.items()):
        param = factors.params[key]
        all_uses = owners[key]
        combined = torch.ones_like(uses[0][1])
        for _use, rows in uses:
            combined = combined * rows
        if len(all_uses) > 1:
            # every module holding this Parameter must want the same factor
            wanted = {mn: torch.ones_like(combined) for mn, _ in all_uses}
            for use, rows in uses:
                holder = next((mn for mn, _ in all_uses if mn == use or mn.startswith(use + ".")), None)
                if holder is None:
                    holder = all_uses[0][0]
                wanted[holder] = wanted[holder] * rows
            distinct = {tuple(v.tolist()) for v in wanted.values()}
            if len(distinct) > 1:
                if not untie:
                    problems.append(
                        f"{' and '.join(mn + '.' + pn for mn, pn in all_uses)} share one weight but need different "
                        f"factors ({', '.join(f'{mn}: x{float(v.mean()):.6g}' for mn, v in wanted.items())}): "
                        "pass untie=True to give each use its own copy"
                    )
                    continue
                first = all_uses[0]
                for mn, pn in all_uses[1:]:
                    clone = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                    modules[mn]._parameters[pn] = clone
                    factors.rows[id(clone)] = wanted[mn]
                    factors.params[id(clone)] = clone
                    factors.axis[id(clone)] = factors.axis.get(key, 0)
                factors.rows[key] = wanted[first[0]]
                config = getattr(out, "config", None)
                if config is not None and hasattr(config, "tie_word_embeddings"):
                    config.tie_word_embeddings = False
                continue
        factors.rows[key] = combined
    if problems:
        raise LoweringError("fxparam.fold cannot absorb every multiplier of this model:\n  " + "\n  ".join(problems))

    with torch.no_grad():
        for key, rows in factors.rows.items():
            p = factors.params[key]
            axis = factors.axis.get(key, 0)
            shape = tuple(-1 if d == axis else 1 for d in range(p.ndim))
            p.mul_(rows.to(p.dtype).to(p.device).view(shape) if p.ndim else rows.to(p.dtype))
    for m, attr, value in attr_resets:
        setattr(m, attr, value)

    # strip fxparam's state: classes, hooks, masks, plan
    for m in out.modules():
        if isinstance(m, ScaledLinear):
            m.__class__ = nn.Linear
            for attr in ("fxparam_in", "fxparam_out"):
                m.__dict__.pop(attr, None)
        elif type(m).__module__.startswith(("fxparam.lowering", "fxparam.kernels")):
            m.__class__ = _plain_class(type(m))
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for hid in [k for k, h in hooks.items()
                        if getattr(h, "fxparam_hook", False) or isinstance(h, (OutputScale, InputScale, PushScale,
                                                                               PopScale))
                        or type(h).__module__.startswith("fxparam.")]:
                del hooks[hid]
                m._forward_hooks_always_called.pop(hid, None)
                m._forward_hooks_with_kwargs.pop(hid, None)
                m._forward_pre_hooks_with_kwargs.pop(hid, None)
        for hid in [k for k, h in m._load_state_dict_post_hooks.items()
                    if type(getattr(h, "hook", h)).__module__.startswith("fxparam.")
                    or getattr(getattr(h, "hook", h), "__self__", None).__class__.__module__.startswith("fxparam.")]:
            del m._load_state_dict_post_hooks[hid]
        registry = m.__dict__.pop("_fxparam_masks", None) or {}
        for buffer in registry.values():
            m._buffers.pop(buffer, None)
            m._non_persistent_buffers_set.discard(buffer)
    for p in out.parameters():
        if p._backward_hooks:
            for hid in [k for k, h in p._backward_hooks.items() if type(h).__module__.startswith("fxparam.")]:
                del p._backward_hooks[hid]
    out.__dict__.pop(PLAN_ATTR, None)
    config = getattr(out, "config", None)
    if config is not None and hasattr(config, "fxparam_plan"):
        delattr(config, "fxparam_plan")

    folded = _outputs(out, args, kwargs)
    err = float((folded - reference).abs().max()) / (float(reference.abs().max()) or 1.0)
    if not err <= 1e-4:
        raise LoweringError(
            f"fxparam.fold: the folded {type(out).__name__} differs from the transformed model by {err:.3g} "
            "(relative max): a multiplier was not absorbed where it acts (e.g. a query projection followed by a "
            "norm, or a fused projection laid out per head). Keep the transformed model (fxparam.save / "
            "save_pretrained carry the plan)."
        )
    return out
