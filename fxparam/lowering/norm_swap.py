"""Swap a model's LayerNorm / RMSNorm modules for per-example-gradient-norm versions, in place.

The swap changes each module's *class* (``module.__class__ = PerExample...``), nothing else: the
module object, its ``weight``/``bias`` Parameter objects, their values, hooks, ``eps`` and every
other attribute stay as they were, so ``state_dict`` keys and order, checkpoints and optimizer
state are untouched and the forward output is bitwise the same on the PyTorch path.

What is detected (``fqns=None``) and what can be swapped:

- ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm`` (and subclasses that keep their forward),
  with a 1-D ``normalized_shape``; the reference GPT's norms are these.
- "Foreign" norm classes such as HF ``LlamaRMSNorm`` / ``T5LayerNorm`` / ``Qwen2RMSNorm``: a
  module whose class name contains "norm", that has no child modules, whose only parameters are
  a 1-D ``weight`` (and, for LayerNorm, a 1-D ``bias`` of the same size), with an epsilon in
  ``variance_epsilon``, ``eps`` or ``epsilon`` (else one of 1e-5, 1e-6, 1e-8, 1e-12 is
  identified), **and whose forward is verified numerically** to be RMSNorm
  ``w * x / sqrt(mean(x^2) + eps)`` or LayerNorm ``w * (x - mean) / sqrt(var + eps) + b`` on
  probe inputs at three scales (so Gemma's ``(1 + w)`` RMSNorm, BatchNorm and the like are
  rejected). Their own forward keeps computing the output; the fused backward supplies the
  gradients and per-example norms. Modules on the meta device cannot be probed and are accepted
  on structure and class name ("rms"/"layer" in it) only.

Auto-detection skips (with a warning) norm-like modules it cannot verify; an explicit ``fqns``
list raises :class:`~fxparam.errors.GNSError` naming each module it cannot swap, and leaves the
model unmodified (everything is validated before anything is swapped).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxparam.errors import GNSError
from fxparam.kernels.norms import NormKind, PerExampleNormMixin, per_example_class

_EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")
_EPS_CANDIDATES = (1e-5, 1e-6, 1e-8, 1e-12)
_NOT_LN_OR_RMS = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)


@dataclass(frozen=True)
class _SwapSpec:
    fqn: str
    module: nn.Module
    target: type[nn.Module]
    eps: float | None  # foreign classes only


def _eps_attr(m: nn.Module) -> float | None:
    for name in _EPS_ATTRS:
        v = getattr(m, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _probe_inputs(n: int, weight: torch.Tensor) -> list[torch.Tensor]:
    # A private generator: the swap must not consume the global RNG.
    gen = torch.Generator(device="cpu").manual_seed(1234)
    base = torch.randn(2, 3, n, generator=gen, dtype=torch.float64) * 3.0 + 0.5  # non-zero mean: LN != RMS
    return [(base * s).to(device=weight.device, dtype=weight.dtype) for s in (1.0, 1e-2, 1e-4)]


def _expected(
    kind: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, eps: float
) -> torch.Tensor:
    x64, w64 = x.double(), w.double()
    if kind == "rmsnorm":
        return F.rms_norm(x64, (x.shape[-1],), w64, eps)
    return F.layer_norm(x64, (x.shape[-1],), w64, b.double() if b is not None else None, eps)


@torch.no_grad()
def _probe(m: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[NormKind, float] | str:
    """(kind, eps) if the module's forward computes LayerNorm/RMSNorm, else the reason it does not."""
    n = weight.shape[0]
    xs = _probe_inputs(n, weight)
    try:
        outs = [type(m).forward(m, x) for x in xs]  # bypass hooks: the probe must be invisible
    except Exception as e:  # noqa: BLE001 - any failure means "cannot verify"
        return f"its forward failed on a probe input of shape {tuple(xs[0].shape)}: {type(e).__name__}: {e}"
    if any(not isinstance(o, torch.Tensor) or o.shape != xs[0].shape for o in outs):
        return "its forward does not return a tensor shaped like its input"
    low = weight.dtype in (torch.float16, torch.bfloat16)
    rtol, atol_rel = (3e-2, 3e-2) if low else (1e-4, 1e-5)
    attr = _eps_attr(m)
    eps_list = (attr,) if attr is not None else _EPS_CANDIDATES
    kinds: tuple[NormKind, ...] = ("layernorm",) if bias is not None else ("rmsnorm", "layernorm")
    for kind in kinds:
        for eps in eps_list:
            ok = True
            for x, out in zip(xs, outs, strict=True):
                exp = _expected(kind, x, weight, bias, eps)
                atol = atol_rel * float(exp.abs().max().clamp_min(1e-30))
                if not torch.allclose(out.double(), exp, rtol=rtol, atol=atol):
                    ok = False
                    break
            if ok:
                return kind, eps
    want = "LayerNorm" if bias is not None else "RMSNorm or LayerNorm"
    eps_txt = f"eps={attr}" if attr is not None else f"any eps in {_EPS_CANDIDATES}"
    return f"its forward does not compute {want} (with {eps_txt}) on probe inputs"


def _classify(fqn: str, m: nn.Module) -> _SwapSpec | str | None:
    """A swap spec, a reason the module cannot be swapped, or None if it is already per-example."""
    if isinstance(m, PerExampleNormMixin):
        return None
    torch_norms: tuple[tuple[type[nn.Module], NormKind], ...] = (
        (nn.LayerNorm, "layernorm"),
        (nn.RMSNorm, "rmsnorm"),
    )
    for torch_cls, kind in torch_norms:
        if isinstance(m, torch_cls):
            shape = tuple(m.normalized_shape)  # type: ignore[arg-type]
            if len(shape) != 1:
                return (
                    f"{type(m).__name__} normalises over {len(shape)} dims (normalized_shape={shape}); "
                    "per-example norm kernels normalise over the last dim only"
                )
            if type(m).forward is torch_cls.forward:
                return _SwapSpec(fqn, m, per_example_class(type(m), kind), None)
            break  # a subclass with its own forward: verify it like a foreign class
    if isinstance(m, _NOT_LN_OR_RMS):
        return f"{type(m).__name__} is not a LayerNorm or RMSNorm"
    if any(True for _ in m.children()):
        return f"{type(m).__name__} has child modules; only leaf norm modules can be swapped"
    params = dict(m.named_parameters(recurse=False))
    weight = params.get("weight")
    bias = params.get("bias")
    if weight is None or set(params) - {"weight", "bias"}:
        return (
            f"{type(m).__name__} has parameters {sorted(params)}; a swappable norm has a 1-D 'weight' "
            "(and optionally a 1-D 'bias') and nothing else"
        )
    if weight.dim() != 1 or (bias is not None and bias.shape != weight.shape):
        return (
            f"{type(m).__name__} has weight {tuple(weight.shape)}"
            f"{'' if bias is None else f' and bias {tuple(bias.shape)}'}; expected 1-D of the hidden size"
        )
    if weight.device.type == "meta":
        eps = _eps_attr(m)
        name = type(m).__name__.lower()
        meta_kind: NormKind | None = "rmsnorm" if "rms" in name else "layernorm" if "layer" in name else None
        if eps is None or meta_kind is None or (meta_kind == "rmsnorm" and bias is not None):
            return f"{type(m).__name__} is on the meta device and cannot be verified by a probe"
        return _SwapSpec(fqn, m, per_example_class(type(m), meta_kind, foreign=True), eps)
    found = _probe(m, weight, bias)
    if isinstance(found, str):
        return f"{type(m).__name__}: {found}"
    kind, eps = found
    return _SwapSpec(fqn, m, per_example_class(type(m), kind, foreign=True), eps)


def _looks_like_norm(m: nn.Module) -> bool:
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        return True
    return "norm" in type(m).__name__.lower() and not isinstance(m, _NOT_LN_OR_RMS)


def swap_norms(
    model: nn.Module, fqns: Iterable[str] | None = None, *, batch_dim: int | dict[str, int] | None = None
) -> list[str]:
    """Make LayerNorm/RMSNorm modules report per-example gradient norms, in place.

    Each module at ``fqns`` (or, when None, every LayerNorm/RMSNorm detected in ``model``; see
    the module docstring for what is detected) gets its class swapped for the per-example
    version: same module object, same Parameter objects and values, same ``state_dict`` keys and
    order, same eps and affine/bias settings, same output. Modules that are already per-example
    are left alone, so swapping twice is a no-op.

    Args:
        model: the model, modified in place.
        fqns: module FQNs (as in ``model.named_modules()``) to swap, e.g. from the norm analysis;
            None to detect them.
        batch_dim: which dim of each norm's input indexes examples, when it should not be found
            from the model (an int for every norm, or ``{norm FQN: dim}``). By default it is found
            at the first training forward (``fxparam.gns._batch_dim``: the model-input dim that
            no matmul, attention or softmax mixes), or by :func:`fxparam.gns.prepare`.

    Returns:
        The FQNs swapped by this call, in the given (or model) order; empty when nothing changed.

    Raises:
        GNSError: an FQN is missing or names a module that cannot be swapped (e.g. a LayerNorm
            over two dims); the message lists every such FQN and nothing has been modified. Or
            ``batch_dim`` is not an int / dict.

    The model also gets a forward pre-hook (one per model) that finds each norm's example
    dimension at the first training forward and reads the number of examples each forward.

    Example:
        >>> from fxparam.models.gpt import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=32, depth=1, head_dim=16))
        >>> swap_norms(model)
        ['blocks.0.ln_1', 'blocks.0.ln_2', 'ln_f']
        >>> swap_norms(model)
        []
    """
    specs: list[_SwapSpec] = []
    seen: set[int] = set()
    if fqns is None:
        skipped: list[str] = []
        for fqn, m in model.named_modules():
            if isinstance(m, _NOT_LN_OR_RMS) and any(True for _ in m.parameters(recurse=False)):
                # affine GroupNorm / BatchNorm / InstanceNorm: say their gains are not in the norm-layer GNS
                skipped.append(f"{fqn!r}: {type(m).__name__} is not a LayerNorm or RMSNorm")
                continue
            if not _looks_like_norm(m):
                continue
            got = _classify(fqn, m)
            if got is None:
                continue
            if isinstance(got, str):
                skipped.append(f"{fqn!r}: {got}")
                continue
            if id(m) not in seen:
                seen.add(id(m))
                specs.append(got)
        if skipped:
            warnings.warn(
                "fxparam.gns.swap_norms: left these norm-like modules alone (no per-example norms for them): "
                + "; ".join(skipped),
                stacklevel=2,
            )
    else:
        if isinstance(fqns, str):
            fqns = [fqns]
        errors: list[str] = []
        for fqn in fqns:
            try:
                m = model.get_submodule(fqn)
            except AttributeError:
                errors.append(f"{fqn!r}: no such module in {type(model).__name__}")
                continue
            got = _classify(fqn, m)
            if got is None:
                continue
            if isinstance(got, str):
                errors.append(f"{fqn!r}: {got}")
            elif id(m) not in seen:
                seen.add(id(m))
                specs.append(got)
        if errors:
            raise GNSError(
                "fxparam.gns.swap_norms: cannot swap " + "; ".join(errors) + ". The model was not modified; "
                "drop these FQNs from the list (the norm-swap pass only lists modules it found as LayerNorm/RMSNorm)."
            )
    for s in specs:
        s.module.__class__ = s.target
        if s.eps is not None:
            s.module.__dict__["_fxparam_eps"] = s.eps
    if specs or batch_dim is not None:
        from fxparam.gns._batch_dim import attach_root

        attach_root(model, batch_dim)
    return [s.fqn for s in specs]


class PrepareSinks:
    """Forward pre-hook for the module ``torch.compile`` returns: :func:`fxparam.gns.prepare` before each call.

    Hooks of the compiled wrapper run eagerly, outside the traced frame, so the per-example
    gradient sinks (graph inputs) exist, for this call's number of examples, before Dynamo
    traces; once they do, it only checks their shapes.
    """

    fxparam_hook = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        from fxparam.gns._batch_dim import prepare

        if torch.is_grad_enabled():
            prepare(self.model, *args, **kwargs)


def unswap_norms(model: nn.Module) -> list[str]:
    """Undo :func:`swap_norms`: give every per-example norm module back its original class.

    Returns:
        The FQNs restored.

    Example:
        >>> from fxparam.models.gpt import GPT, GPTConfig
        >>> model = GPT(GPTConfig(width=32, depth=1, head_dim=16))
        >>> _ = swap_norms(model)
        >>> unswap_norms(model)
        ['blocks.0.ln_1', 'blocks.0.ln_2', 'ln_f']
        >>> type(model.ln_f).__name__
        'LayerNorm'
    """
    from fxparam.gns._batch_dim import detach_root

    detach_root(model)
    out = []
    for fqn, m in model.named_modules():
        if isinstance(m, PerExampleNormMixin):
            m.__class__ = m.base_class  # type: ignore[assignment]
            m.__dict__.pop("_fxparam_eps", None)
            m.__dict__.pop("_fxparam_gns", None)
            m.__dict__.pop("backend", None)
            out.append(fqn)
    return out


__all__ = ["PrepareSinks", "swap_norms", "unswap_norms"]
