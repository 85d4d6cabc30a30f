"""Verify a lowering against its plan, on the transformed model itself.

A right plan is worth nothing if the running model does something else.  :func:`verify`
checks, site by site, that what the Plan says is what the model computes:

- **forward multipliers** (embedding alpha_in, readout alpha_out/m_d, residual branch
  1/m_L^alpha; ``Plan.multipliers``): the fxparam state on the module (``ScaledLinear``
  factors, ``OutputScale``/``InputScale`` hooks) multiplies to the planned factor, and -
  probed on one real forward - the module's output equals ``out * f(in * x)`` where
  ``f`` is the module's own forward without fxparam.  The realized factor is the
  least-squares ratio ``<y, y0> / <y0, y0>`` of the output to the unscaled output ``y0``;
- **attention logit scales** (``Plan.attention``): the planned attribute holds the
  planned scale, and every ``scaled_dot_product_attention`` call made inside the module
  during the probe (seen by a :class:`torch.overrides.TorchFunctionMode`, however SDPA was
  imported) runs with the planned scale (``scale`` or ``1/sqrt(head_dim)`` if None);
- **nothing else changed**: no module outside the plan carries fxparam state;
- **re-initialised weights** (``init=True``, right after a transform): each re-drawn
  parameter's RMS is within ``6 / sqrt(2 n)`` (relative) of its planned std (n =
  number of kept entries, masked ones excluded), ``init="zeros"`` parameters are zero.

Reference: the multiplier tables of Yang et al. 2021 (muP, Table 3/8) and Dey et al.
2025 (CompleteP, Table 1) are what the Plan holds; this module only checks the lowering.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from fxparam.errors import FxparamError, LoweringError

__all__ = ["SiteCheck", "VerifyReport", "verify", "verify_graph"]

#: Relative tolerance of a probed output against ``out * f(in * x)`` (fp32 reassociation of the scaling).
PROBE_RTOL = 1e-4


def _rtol(dtype: torch.dtype) -> float:
    """:data:`PROBE_RTOL`, or 4 ulps of a half-precision output (bf16 0.031, fp16 0.0039): scaling the
    weight instead of the activation rounds differently there.  A wrong multiplier (a double scaling,
    m_d^-1 for m_d^-1/2) is off by far more."""
    return max(PROBE_RTOL, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else PROBE_RTOL


class SiteCheck(BaseModel):
    """One check of one site.

    Attributes:
        site: module FQN (``input:<fqn>`` for an input multiplier), or parameter FQN for init.
        kind: "multiplier", "attention", "untouched" (no fxparam state outside the plan), "init",
            or "tie" (a weight the plan records as tied is one Parameter with its target).
        planned: the planned factor / scale / std.
        realized: what the model does (probed) or holds (state); None if not measurable.
        how: "probe" (measured on a forward) or "state" (read from the module).
        ok: whether realized matches planned.
        detail: why not, or what was compared.
    """

    model_config = ConfigDict(extra="forbid")

    site: str
    kind: Literal["multiplier", "attention", "untouched", "init", "tie"]
    planned: float | None = None
    realized: float | None = None
    how: Literal["probe", "state"] = "state"
    ok: bool = True
    detail: str = ""


class VerifyReport(BaseModel):
    """The result of :func:`verify`: one :class:`SiteCheck` per site.

    Attributes:
        model_class: class name of the verified model.
        probed: whether a real forward was run (False on the meta device or with probe=False).
        checks: every check made.
        notes: what could not be checked and why.
    """

    model_config = ConfigDict(extra="forbid")

    model_class: str
    probed: bool = False
    checks: list[SiteCheck] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[SiteCheck]:
        return [c for c in self.checks if not c.ok]

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.6g}"

        head = (f"fxparam.verify({self.model_class}): {len(self.checks)} checks, {len(self.failures)} failed"
                f" ({'probed on a forward' if self.probed else 'state only, no forward'})")
        rows = [f"  {'FAIL' if not c.ok else 'ok  '} {c.kind:<10} {c.site:<40} planned {fmt(c.planned):>10}"
                f"  realized {fmt(c.realized):>10}  [{c.how}]" + (f"  {c.detail}" if not c.ok and c.detail else "")
                for c in self.checks]
        return "\n".join([head, *rows, *(f"  note: {n}" for n in self.notes)])

    def raise_if_failed(self) -> None:
        """Raise :class:`~fxparam.LoweringError` naming every failed site, planned vs realized."""
        if self.ok:
            return
        lines = [f"{c.kind} at {c.site!r}: planned {c.planned}, realized {c.realized} ({c.how}); {c.detail}"
                 for c in self.failures]
        raise LoweringError(
            f"fxparam.verify: the lowered {self.model_class} does not realize its plan at {len(lines)} site(s):\n  "
            + "\n  ".join(lines)
        )


# --------------------------------------------------------------------------- state

#: Prefix naming an input-multiplier site in reports (``input:lm_head``), as in the Plan's JSON v1.
INPUT = "input:"


def _tables(plan: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(output multipliers, input multipliers) by module FQN, from a Plan of any version."""
    outs = getattr(plan, "output_multipliers", None)
    if outs is not None:
        return dict(outs), dict(plan.input_multipliers)
    outs, ins = {}, {}
    for key, factor in plan.multipliers.items():
        if key.startswith(INPUT):
            ins[key[len(INPUT):]] = factor
        else:
            outs[key] = factor
    return outs, ins



def _state_factors(module: nn.Module) -> tuple[float, float, float | None, bool]:
    """(output factor, input factor, pushed SDPA scale, has any fxparam state) held by ``module``."""
    from fxparam.lowering._hooks import InputScale, OutputScale, PushScale, ScaledLinear

    out = inp = 1.0
    pushed = None
    any_state = False
    if isinstance(module, ScaledLinear):
        out *= module.fxparam_out
        inp *= module.fxparam_in
        any_state = True
    for hook in module._forward_hooks.values():
        if isinstance(hook, OutputScale):
            out *= hook.factor
            any_state = True
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, InputScale):
            inp *= hook.factor
            any_state = True
        elif isinstance(hook, PushScale):
            pushed = hook.scale
            any_state = True
    any_state = any_state or any(getattr(h, "fxparam_hook", False) for h in module._forward_hooks.values())
    return out, inp, pushed, any_state


def _close(a: float, b: float, rtol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) if math.isfinite(a) and math.isfinite(b) else a == b


# --------------------------------------------------------------------------- probe


class _SDPARecorder(torch.overrides.TorchFunctionMode):
    """Records the effective logit scale of every SDPA call made while it is active."""

    def __init__(self, sink: list[float]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.nn.functional.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention):
            query = args[0] if args else kwargs["query"]
            scale = kwargs.get("scale", args[6] if len(args) > 6 else None)
            self.sink.append(float(scale) if scale is not None else 1.0 / math.sqrt(query.size(-1)))
        return func(*args, **kwargs)


class _EnterMode:
    def __init__(self, modes: dict[str, list[Any]], name: str, sink: list[float], replaying: list[bool]) -> None:
        self.modes, self.name, self.sink, self.replaying = modes, name, sink, replaying

    def __call__(self, module: nn.Module, args: tuple) -> None:
        mode = _SDPARecorder([] if self.replaying[0] else self.sink)  # a replay's SDPA calls are not the model's
        mode.__enter__()
        self.modes.setdefault(self.name, []).append(mode)


class _ExitMode:
    def __init__(self, modes: dict[str, list[Any]], name: str) -> None:
        self.modes, self.name = modes, name

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        stack = self.modes.get(self.name)
        if stack:
            stack.pop().__exit__(None, None, None)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _plain_forward(module: nn.Module) -> Any:
    """The module's own forward without fxparam (the class below ``ScaledLinear`` / GNS swaps)."""
    from fxparam.lowering._hooks import ScaledLinear

    cls = type(module)
    if issubclass(cls, ScaledLinear):
        cls = nn.Linear
    return cls.forward.__get__(module)


def _is_multiplier_hook(hook: Any) -> bool:
    """fxparam's forward-multiplier hooks (attention-scale scopes and mask guards are kept in a replay)."""
    from fxparam.lowering._hooks import InputScale, OutputScale

    return isinstance(hook, (OutputScale, InputScale))


class _Replay:
    """Re-run one module with fxparam's multipliers on it switched off, the user's own hooks kept.

    ``realize(out, inp)`` runs the module's call (every non-fxparam pre/post hook, in their
    order) around the ideal lowering ``out * forward(inp * x)`` of its plain forward; the
    result is what the planned multipliers must give on the same call inputs, whatever the
    user's hooks do (a soft-cap on the readout, a pre-hook editing inputs).  Everything is
    put back afterwards: class, hook dicts, an instance ``forward``.
    """

    def __init__(self, module: nn.Module, flag: list[bool]) -> None:
        self.module, self.flag = module, flag

    def realize(self, args: tuple, kwargs: dict, out: float = 1.0, inp: float = 1.0) -> Any:
        from fxparam.lowering._hooks import ScaledLinear

        m = self.module
        saved_cls = type(m)
        saved_hooks = [(d, d.copy()) for d in (m._forward_hooks, m._forward_pre_hooks)]
        had_forward = "forward" in m.__dict__
        own_forward = m.__dict__.get("forward")
        plain = own_forward if had_forward else _plain_forward(m)

        def ideal(*a: Any, **k: Any) -> Any:
            if inp != 1.0 and a:
                a = (a[0] * inp, *a[1:])
            y = plain(*a, **k)
            if out == 1.0:
                return y
            if isinstance(y, torch.Tensor):
                return y * out
            if isinstance(y, tuple) and y and isinstance(y[0], torch.Tensor):
                return (y[0] * out, *y[1:])
            return y

        self.flag[0] = True
        try:
            if isinstance(m, ScaledLinear):
                m.__class__ = nn.Linear
            for d, _ in saved_hooks:
                for key in [k for k, h in d.items() if _is_multiplier_hook(h)]:
                    del d[key]
            m.forward = ideal
            return m(*args, **kwargs)
        finally:
            self.flag[0] = False
            if had_forward:
                m.forward = own_forward
            else:
                m.__dict__.pop("forward", None)
            m.__class__ = saved_cls
            for d, copy_ in saved_hooks:
                d.clear()
                d.update(copy_)


def _probe_inputs(model: nn.Module, example_inputs: Any) -> tuple[tuple, dict]:
    from fxparam.capture import _split_inputs, default_example_inputs

    args, kwargs = default_example_inputs(model) if example_inputs is None else _split_inputs(example_inputs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    vocab = min((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), default=None)
    gen = torch.Generator().manual_seed(0)

    def fix(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if example_inputs is None and vocab and t.dtype == torch.long and not t.any():
            t = torch.randint(0, vocab, t.shape, generator=gen)  # zeros make every position alike
        return t.to(device)

    kwargs = {k: fix(v) for k, v in kwargs.items()}
    try:
        import inspect as _inspect

        if "use_cache" in _inspect.signature(model.forward).parameters:
            kwargs.setdefault("use_cache", False)  # a KV cache would make re-running a site differ
    except (TypeError, ValueError):
        pass
    return tuple(fix(a) for a in args), kwargs


@torch.no_grad()
def _probe(model: nn.Module, plan: Any, report: VerifyReport, example_inputs: Any) -> None:
    modules = dict(model.named_modules())
    outs, ins = _tables(plan)
    sites = sorted({*outs, *ins})
    seen_in: dict[str, tuple[tuple, dict]] = {}
    seen_out: dict[str, Any] = {}
    sdpa: dict[str, list[float]] = {name: [] for name in plan.attention}
    modes: dict[str, list[Any]] = {}
    replaying = [False]  # True while _Replay re-runs a site: the recorders below must not record it
    handles = []
    # no inputs to probe with is the caller's to fix (CaptureError naming example_inputs), not a failed site
    args, kwargs = _probe_inputs(model, example_inputs)

    def pre(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if name not in seen_in and not replaying[0]:  # a copy: the model may write into its activations later
                clone = lambda v: v.clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
                seen_in[name] = (tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()})

        return hook

    def post(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not replaying[0]:
                seen_out.setdefault(name, output)

        return hook

    try:
        for name in sites:
            handles.append(modules[name].register_forward_pre_hook(pre(name), with_kwargs=True, prepend=True))
            handles.append(modules[name].register_forward_hook(post(name)))
        for name in set(plan.attention) - set(sites):  # inputs kept to test that a scale attribute is used
            handles.append(modules[name].register_forward_pre_hook(pre(name), with_kwargs=True, prepend=True))
        for name in plan.attention:
            # entered before fxparam's own scope (prepend): the recorder sits below it and sees the final scale
            handles.append(modules[name].register_forward_pre_hook(_EnterMode(modes, name, sdpa[name], replaying),
                                                                   prepend=True))
            handles.append(modules[name].register_forward_hook(_ExitMode(modes, name), always_call=True))
        training = {m: m.training for m in model.modules()}
        model.eval()
        try:
            model(*args, **kwargs)
        finally:
            for m, flag in training.items():
                m.training = flag
    except FxparamError as exc:
        report.checks.append(SiteCheck(site=type(model).__name__, kind="multiplier", how="probe", ok=False,
                                       detail=f"the transformed model's forward raised: {exc}"))
        return
    finally:
        for stack in modes.values():
            while stack:
                stack.pop().__exit__(None, None, None)
        for h in handles:
            h.remove()
    report.probed = True

    for name in sites:
        planned_out = outs.get(name, 1.0)
        planned_in = ins.get(name, 1.0)
        planned = planned_out * planned_in
        label = name if planned_in == 1.0 else (INPUT + name if planned_out == 1.0 else f"{name} (input x output)")
        if name not in seen_in:
            report.notes.append(f"{name} was not called by the probe forward: multiplier checked on state only")
            continue
        args, kwargs = seen_in[name]  # the call's inputs, before any pre-hook (the user's or fxparam's)
        y = _first_tensor(seen_out[name])
        replay = _Replay(modules[name], replaying)
        y0 = _first_tensor(replay.realize(args, kwargs))  # fxparam off, the user's hooks on
        expected = _first_tensor(replay.realize(args, kwargs, out=planned_out, inp=planned_in))
        if y is None or y0 is None or expected is None:
            report.checks.append(SiteCheck(site=label, kind="multiplier", planned=planned, how="probe", ok=False,
                                           detail="its output is not a tensor, so a multiplier cannot apply"))
            continue
        rtol = _rtol(y.dtype)
        expected = expected.float()
        y, y0 = y.float(), y0.float()
        denom = float((y0 * y0).sum())
        realized = float((y * y0).sum()) / denom if denom > 0 else float("nan")
        scale = float(expected.abs().max()) or 1.0
        err = float((y - expected).abs().max()) / scale
        ok = bool(torch.isfinite(y).all()) and err <= rtol
        if planned_in == 1.0 or ok:
            shown = realized if planned_in == 1.0 else planned * (float((y * expected).sum()) /
                                                                  max(float((expected * expected).sum()), 1e-30))
        else:
            shown = realized
        report.checks.append(SiteCheck(
            site=label, kind="multiplier", planned=planned, realized=shown, how="probe", ok=ok,
            detail=f"max |y - planned * f(x)| / max|planned * f(x)| = {err:.3g} (tolerance {rtol:.3g})",
        ))

    for name, site in plan.attention.items():
        calls = sdpa[name]
        if site.attr is not None and (not calls or site.kind != "sdpa") and name in seen_in:
            check = _attribute_in_effect(modules, name, site, seen_in[name], replaying)
            if check is not None:
                report.checks.append(check)
                if not check.ok:
                    continue
        if not calls:
            if site.attr is None and site.scale != site.previous:
                report.checks.append(SiteCheck(
                    site=name, kind="attention", planned=site.scale, how="probe", ok=False,
                    detail="no scaled_dot_product_attention call was seen inside the module, so the planned "
                           "scale cannot be in effect",
                ))
            else:
                report.notes.append(f"{name}: no SDPA call seen (hand-written or fused attention); scale checked "
                                    "on module state only")
            continue
        if site.kind != "sdpa":  # scale applied by hand before SDPA (OPT: q * scaling, then SDPA(scale=1.0))
            report.notes.append(f"{name}: logit scale applied outside SDPA (attribute {site.attr!r}), SDPA called "
                                f"with scale {calls[0]:.6g}; scale checked on module state")
            continue
        bad = [s for s in calls if not _close(s, site.scale, 1e-6)]
        report.checks.append(SiteCheck(
            site=name, kind="attention", planned=site.scale, realized=bad[0] if bad else calls[0], how="probe",
            ok=not bad,
            detail=(f"{len(bad)} of {len(calls)} SDPA calls ran with scale {bad[0]:.6g}: SDPA is probably imported "
                    "by name or called through a path fxparam does not override; give the module a float "
                    "`scaling`/`scale` attribute its forward passes to SDPA, or pass attention='sp'")
            if bad else f"{len(calls)} SDPA call(s)",
        ))


def _attribute_in_effect(modules: dict[str, nn.Module], name: str, site: Any, inputs: tuple[tuple, dict],
                         replaying: list[bool]) -> SiteCheck | None:
    """Hand-written attention whose scale the plan set through an attribute: re-run the module with the
    attribute put back to its previous value.  The same output means the forward does not read it (an
    attribute that only happened to hold the scale's value), so the planned scale is not in effect."""
    owner = modules.get(site.attr_module or name)
    module = modules[name]
    held = getattr(owner, site.attr, None) if owner is not None else None
    if not isinstance(held, float) or _close(float(site.previous), held, 1e-6):
        return None
    args, kwargs = inputs
    training = {m: m.training for m in module.modules()}
    replaying[0] = True
    try:
        module.eval()
        with torch.no_grad():
            y = _first_tensor(module(*args, **kwargs))
            setattr(owner, site.attr, float(site.previous))
            try:
                y_prev = _first_tensor(module(*args, **kwargs))
            finally:
                setattr(owner, site.attr, held)
    except FxparamError:
        raise
    except Exception:  # noqa: BLE001 - a module that cannot be re-run alone: checked on state only, as before
        return None
    finally:
        replaying[0] = False
        for m, flag in training.items():
            m.training = flag
    if y is None or y_prev is None:
        return None
    used = not torch.equal(y, y_prev)
    return SiteCheck(
        site=name, kind="attention", planned=site.scale, realized=site.scale if used else site.previous,
        how="probe", ok=used,
        detail=(f"attribute {(site.attr_module or name)}.{site.attr} changes the module's output" if used else
                f"setting {(site.attr_module or name)}.{site.attr} to {site.scale:.6g} does not change the "
                f"module's output: its forward does not read that attribute (its value {site.previous:.6g} only "
                "equals the logit scale), so the planned scale is not in effect. Make the forward use it "
                "(`scores * self.scaling`), or pass attention='sp'"),
    )


# --------------------------------------------------------------------------- init


@torch.no_grad()
def _check_init(model: nn.Module, plan: Any, report: VerifyReport) -> None:
    names = dict(model.named_parameters(remove_duplicate=False))
    masks: dict[str, torch.Tensor] = {}
    if plan.masks:
        from fxparam.lowering.masks import masks_of

        masks = masks_of(model)
    for fqn, p in plan.params.items():
        if p.tied_to or p.init == "keep" or fqn not in names:
            continue
        t = names[fqn]
        if t.device.type == "meta":
            report.notes.append("init not checked: the model is on the meta device")
            return
        values = t.detach().float()
        if fqn in masks:
            values = values[masks[fqn].to(values.device).bool()]
        if p.init == "zeros":
            realized = float(values.abs().max()) if values.numel() else 0.0
            report.checks.append(SiteCheck(site=fqn, kind="init", planned=0.0, realized=realized, ok=realized == 0.0,
                                           detail="planned init zeros"))
            continue
        n = values.numel()
        if p.init_std is None or n < 16:
            continue
        realized = float(values.pow(2).mean().sqrt())
        band = 6.0 / math.sqrt(2 * n) + 1e-3
        ok = abs(realized / p.init_std - 1.0) <= band if p.init_std > 0 else realized == 0.0
        report.checks.append(SiteCheck(site=fqn, kind="init", planned=p.init_std, realized=realized, ok=ok,
                                       detail=f"RMS of {n} entries, band +-{band:.3g} relative"))


# --------------------------------------------------------------------------- entry point


def verify(
    model: nn.Module,
    *,
    example_inputs: Any = None,
    init: bool = False,
    probe: bool = True,
    raise_on_failure: bool = False,
) -> VerifyReport:
    """Check that a transformed model realizes its plan, site by site.

    Args:
        model: an eager-transformed model (``fxparam.transform(..., lowering="eager")``),
            or one wrapped in DDP / ``torch.compile``.
        example_inputs: inputs for the probe forward (as for ``fxparam.inspect``); optional for
            the reference GPT and HF models.  Token ids of zeros are replaced by random ids.
        init: also check that re-initialised weights have their planned std (right after a
            transform with ``init=True``; trained weights have moved away from it).
        probe: run one forward (eval mode, no grad) to measure realized multipliers and
            attention scales; False (and always on the meta device) checks module state only.
        raise_on_failure: raise instead of returning a failed report.

    Returns:
        A :class:`VerifyReport` (print it for a table; ``report.ok``, ``report.failures``).

    Raises:
        CaptureError: ``probe=True`` and no ``example_inputs`` for a model they cannot be guessed for.
        LoweringError: the model was never transformed, or carries fxparam's scaling without its
            plan (``del model._fxparam_plan``); or, with ``raise_on_failure``, a site
            whose realized factor/scale differs from the plan (naming site, planned, realized).

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model = fxparam.transform(GPT(GPTConfig(width=64, depth=2)), "mup", base_width=32)
        >>> report = fxparam.verify(model)
        >>> report.ok, report.probed
        (True, True)
        >>> print(report)  # doctest: +ELLIPSIS
        fxparam.verify(GPT): ... checks, 0 failed (probed on a forward)
        ...
    """
    from fxparam.lowering._rollback import require_plan
    from fxparam.plan import plan_of, unwrap

    model = unwrap(model)
    require_plan(model, "fxparam.verify")
    plan = plan_of(model)
    report = VerifyReport(model_class=type(model).__name__)
    modules = dict(model.named_modules())
    outs, ins = _tables(plan)
    planned_modules = {*outs, *ins}

    # state: the factors each module holds
    for name, module in modules.items():
        out, inp, pushed, any_state = _state_factors(module)
        planned_out = outs.get(name, 1.0)
        planned_in = ins.get(name, 1.0)
        if name in planned_modules:
            if name in outs:
                report.checks.append(SiteCheck(site=name, kind="multiplier", planned=planned_out, realized=out,
                                               ok=_close(out, planned_out), detail="output factor held by the module"))
            if name in ins:
                report.checks.append(SiteCheck(site=INPUT + name, kind="multiplier", planned=planned_in,
                                               realized=inp, ok=_close(inp, planned_in),
                                               detail="input factor held by the module"))
        elif any_state and name not in plan.attention:
            report.checks.append(SiteCheck(site=name, kind="untouched", planned=1.0, realized=out * inp, ok=False,
                                           detail="carries fxparam scaling but is not in the plan"))
        if name in plan.attention:
            site = plan.attention[name]
            if site.attr is not None:
                owner = modules.get(site.attr_module or name)
                held = getattr(owner, site.attr, None) if owner is not None else None
                realized = float(held) if isinstance(held, (int, float)) else None
                report.checks.append(SiteCheck(
                    site=name, kind="attention", planned=site.scale, realized=realized,
                    ok=realized is not None and _close(realized, site.scale),
                    detail=f"attribute {(site.attr_module or name)}.{site.attr}",
                ))
            elif site.scale != site.previous:
                report.checks.append(SiteCheck(
                    site=name, kind="attention", planned=site.scale, realized=pushed,
                    ok=pushed is not None and _close(pushed, site.scale), detail="SDPA scale set by a pre-hook",
                ))
    names = dict(model.named_parameters(remove_duplicate=False))
    for fqn, rule in plan.params.items():
        if rule.tied_to and fqn in names and rule.tied_to in names:
            same = names[fqn] is names[rule.tied_to]
            report.checks.append(SiteCheck(
                site=fqn, kind="tie", planned=1.0, realized=1.0 if same else 0.0, ok=same,
                detail="" if same else f"planned tied to {rule.tied_to}, but they are two Parameters (to_empty "
                                       "of a meta model unties them): fxparam.checkpoint.retie(model, plan) or "
                                       "model.tie_weights()",
            ))
    missing = sorted(planned_modules - set(modules))
    for name in missing:
        report.checks.append(SiteCheck(site=name, kind="multiplier", ok=False, detail="module not in the model"))

    on_meta = any(p.device.type == "meta" for p in model.parameters())
    if probe and not on_meta:
        try:
            _probe(model, plan, report, example_inputs)
        except FxparamError:
            raise
        except Exception as exc:  # noqa: BLE001 - a transformed model that does not run is a failed check
            report.checks.append(SiteCheck(site=type(model).__name__, kind="multiplier", how="probe", ok=False,
                                           detail=f"the probe forward raised {type(exc).__name__}: {exc}"))
    elif on_meta:
        report.notes.append("on the meta device: no probe forward, module state checked only")
    if init:
        _check_init(model, plan, report)
    if raise_on_failure:
        report.raise_if_failed()
    return report


@torch.no_grad()
def verify_graph(
    gm: nn.Module, model: nn.Module, *, example_inputs: Any = None, raise_on_failure: bool = False
) -> VerifyReport:
    """Check a graph lowering against the verified eager lowering of the same plan (a differential probe).

    A copy of ``model`` (whose Parameters ``gm`` shares) is lowered eagerly with ``gm``'s plan and
    verified site by site (:func:`verify`); then ``gm`` and the copy must give the same outputs
    on the example inputs (the only shapes a GraphModule accepts).

    Args:
        gm: the GraphModule from ``fxparam.transform(..., lowering="graph")``.
        model: the module it was exported from.
        example_inputs: the inputs it was exported with (optional for GPT / HF models).
        raise_on_failure: raise instead of returning a failed report.

    Returns:
        The eager copy's :class:`VerifyReport` plus one "multiplier" check named ``<graph>``
        (planned 1.0 = equal outputs; realized = ``<y_graph, y_eager> / <y_eager, y_eager>``).

    Raises:
        LoweringError: with ``raise_on_failure``, a failed site or outputs that differ.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> model, idx = GPT(GPTConfig(width=64, depth=2)), torch.zeros(2, 8, dtype=torch.long)
        >>> gm = fxparam.transform(model, "mup", base_width=32, lowering="graph", example_inputs=idx)
        >>> verify_graph(gm, model, example_inputs=idx).ok  # transform ran this check already
        True
    """
    from fxparam.capture import _split_inputs, default_example_inputs
    from fxparam.lowering.eager import lower_eager
    from fxparam.plan import PLAN_ATTR, plan_of

    plan = plan_of(gm)
    report = VerifyReport(model_class=f"GraphModule of {type(model).__name__}")
    if any(p.device.type == "meta" for p in model.parameters()):
        report.notes.append("on the meta device: the graph lowering was not probed")
        return report
    twin = copy.deepcopy(model)
    if getattr(twin, PLAN_ATTR, None) is not None:
        delattr(twin, PLAN_ATTR)
    lower_eager(twin, plan, init=False)
    eager_report = verify(twin, example_inputs=example_inputs)
    report.checks += eager_report.checks
    report.notes += eager_report.notes
    report.probed = eager_report.probed
    args, kwargs = default_example_inputs(model) if example_inputs is None else _split_inputs(example_inputs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    training = {m: m.training for m in twin.modules()}
    twin.eval()
    y_eager = _first_tensor(_logits(twin(*args, **kwargs)))
    y_graph = _first_tensor(_logits(gm(*args, **kwargs)))
    for m, flag in training.items():
        m.training = flag
    if y_eager is None or y_graph is None or y_eager.shape != y_graph.shape:
        report.checks.append(SiteCheck(site="<graph>", kind="multiplier", how="probe", ok=False,
                                       detail="graph and eager outputs are not comparable tensors"))
    else:
        a, b = y_graph.float(), y_eager.float()
        err = float((a - b).abs().max()) / (float(b.abs().max()) or 1.0)
        realized = float((a * b).sum()) / max(float((b * b).sum()), 1e-30)
        report.checks.append(SiteCheck(site="<graph>", kind="multiplier", planned=1.0, realized=realized,
                                       how="probe", ok=err <= 1e-4,
                                       detail=f"max |graph - eager| / max|eager| = {err:.3g}"))
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _logits(out: Any) -> Any:
    return getattr(out, "logits", out)
