"""The plan travels with the checkpoint; meta-device models get their init.

- :func:`save` / :func:`load`: safetensors files whose metadata carries the plan JSON
  (``"fxparam_plan"``); loading into an untransformed model applies the plan first
  (``init=False``), loading into a model transformed with another plan is refused.
- Hugging Face: a transformed model's ``config`` carries the plan (``config.fxparam_plan``,
  written by the transform), so ``save_pretrained`` writes it into ``config.json`` and
  ``push_to_hub`` uploads it; :func:`from_pretrained` is the one documented line that
  returns the transformed model.  A model loaded with plain ``cls.from_pretrained`` is
  untransformed: ``fxparam.plan_of`` / ``fxparam.optimizer`` on it raise naming
  :func:`from_pretrained` (its config still carries the plan).
- :func:`init_weights`: the build-on-meta flow, ``transform(init=False)`` ->
  ``to_empty(device=...)`` -> ``init_weights(model)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import LoweringError
from fxparam.plan import PLAN_ATTR, Plan, plan_of, unwrap

__all__ = ["CONFIG_ATTR", "METADATA_KEY", "from_pretrained", "init_weights", "load", "save"]

#: safetensors metadata key holding the plan JSON.
METADATA_KEY = "fxparam_plan"
#: Attribute of a Hugging Face config holding the plan (a JSON-able dict), saved in config.json.
CONFIG_ATTR = "fxparam_plan"


def record_in_config(model: nn.Module, plan: Plan) -> None:
    """Put ``plan`` in a Hugging Face model's ``config`` (so ``save_pretrained`` writes it); no-op otherwise."""
    config = getattr(unwrap(model), "config", None)
    if callable(getattr(config, "save_pretrained", None)) and callable(getattr(config, "to_json_string", None)):
        setattr(config, CONFIG_ATTR, plan.model_dump(mode="json"))


def plan_in_config(model: nn.Module) -> Plan | None:
    """The plan a Hugging Face config carries (a checkpoint saved from a transformed model), or None."""
    data = getattr(getattr(unwrap(model), "config", None), CONFIG_ATTR, None)
    if not data:
        return None
    return Plan.model_validate(data) if isinstance(data, dict) else Plan.from_json(data)


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None) -> None:
    """Save a transformed model's weights as safetensors, with its plan in the file's metadata.

    Tied weights are stored once (``safetensors.torch.save_model``).

    Args:
        model: a transformed model (DDP / ``torch.compile`` wrappers are looked through).
        path: the ``.safetensors`` file to write.
        metadata: extra string metadata to store.

    Raises:
        LoweringError: ``model`` was never transformed (save a plain model with safetensors), or
            carries fxparam's scaling but its plan was deleted.

    Example:
        >>> import os, tempfile
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> cfg = GPTConfig(width=64, depth=2)
        >>> model = fxparam.transform(GPT(cfg), "mup", base_width=32)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
        >>> fxparam.save(model, path)
        >>> fresh = fxparam.load(GPT(cfg), path)  # the plan is applied, then the weights are loaded
        >>> fxparam.plan_of(fresh).m_d, fxparam.verify(fresh).ok
        (2.0, True)
    """
    from safetensors.torch import save_model

    from fxparam._version import __version__
    from fxparam.lowering._rollback import require_plan

    inner = unwrap(model)
    require_plan(inner, "fxparam.save")  # its weights are in the plan's parameterization: never save it plan-less
    plan = plan_of(inner)
    meta = {METADATA_KEY: plan.to_json(), "fxparam_version": __version__, **(metadata or {})}
    save_model(inner, os.fspath(path), metadata=meta)


def load(
    model: nn.Module | Callable[[], nn.Module],
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    device: str | torch.device = "cpu",
    apply: bool = True,
) -> nn.Module:
    """Load a safetensors checkpoint; a plan in its metadata is applied first if the model lacks it.

    Args:
        model: the model to load into, or a class / zero-argument factory building it.
        path: the ``.safetensors`` file.
        strict: as for ``load_state_dict``.
        device: where safetensors materialises the tensors before copying them in.
        apply: apply the checkpoint's plan to an untransformed model (``init=False``); False
            refuses instead (to catch a model that should have been transformed already).

    Returns:
        The model, transformed as the checkpoint's model was, with its weights.

    Raises:
        LoweringError: the model is transformed with a different plan than the checkpoint's,
            or (``apply=False``) the checkpoint is an fxparam checkpoint and the model is not
            transformed.  On any failure (also safetensors' missing / unexpected keys) the model
            is restored as it was handed in: no plan applied, its own weights.

    Warns:
        UserWarning: the model is transformed but the checkpoint carries no plan (a plain
            checkpoint's weights are in another parameterization).
    """
    from safetensors import safe_open

    from fxparam.lowering._rollback import Snapshot

    target = model if isinstance(model, nn.Module) else model()
    inner = unwrap(target)
    with safe_open(os.fspath(path), framework="pt") as f:
        text = (f.metadata() or {}).get(METADATA_KEY)
    current = getattr(inner, PLAN_ATTR, None)
    # all or nothing: a load that fails after the plan was applied (missing / unexpected keys, a shape)
    # leaves the model untransformed with its own weights, as the user handed it
    snapshot = Snapshot(inner)
    config = getattr(inner, "config", None)
    saved_config = dict(vars(config)) if hasattr(config, "__dict__") else None
    try:
        _apply_and_load(inner, path, text, current, strict=strict, device=device, apply=apply)
    except BaseException:
        snapshot.restore()
        if saved_config is not None:
            vars(config).clear()
            vars(config).update(saved_config)
        raise
    return target


def _apply_and_load(
    inner: nn.Module, path: str | os.PathLike[str], text: str | None, current: Plan | None, *, strict: bool,
    device: str | torch.device, apply: bool,
) -> None:
    from safetensors.torch import load_model

    from fxparam.api import apply_plan

    if text is None:
        if current is not None:
            warnings.warn(
                f"{os.fspath(path)} carries no fxparam plan but {type(inner).__name__} is transformed: its weights "
                "were trained in another parameterization. Load it into an untransformed model, or save with "
                "fxparam.save.",
                stacklevel=3,
            )
    else:
        saved = Plan.from_json(text)
        if current is None:
            if not apply:
                raise LoweringError(
                    f"{os.fspath(path)} is an fxparam checkpoint ({' -> '.join(saved.passes)}) and "
                    f"{type(inner).__name__} is not transformed: its outputs would differ from the saved model's. "
                    "Call fxparam.load(model, path) (apply=True) or fxparam.apply_plan(model, plan) first."
                )
            apply_plan(inner, saved, init=False)
        elif current.fingerprint() != saved.fingerprint():
            raise LoweringError(
                f"{type(inner).__name__} is transformed with another plan ({' -> '.join(current.passes)}, "
                f"m_d={current.m_d:.4g}, m_L={current.m_L:.4g}) than {os.fspath(path)} "
                f"({' -> '.join(saved.passes)}, m_d={saved.m_d:.4g}, m_L={saved.m_L:.4g}): load it into a fresh "
                "untransformed model (fxparam.load applies the checkpoint's plan)."
            )
    load_model(inner, os.fspath(path), strict=strict, device=str(device))


def from_pretrained(cls: Any, path: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """``cls.from_pretrained(path, **kwargs)``, transformed with the plan saved in its config.

    The one line that restores a transformed Hugging Face model:
    ``model = fxparam.from_pretrained(LlamaForCausalLM, "ckpt/")``.

    Args:
        cls: a ``transformers`` model class (``LlamaForCausalLM``, ``AutoModelForCausalLM``...).
        path: a directory written by ``save_pretrained`` of a transformed model.
        **kwargs: forwarded to ``cls.from_pretrained``.

    Returns:
        The loaded model with the saved plan applied (``init=False``: the loaded weights are kept).

    Raises:
        LoweringError: the directory's config carries no fxparam plan (the model was saved
            untransformed: load it with ``cls.from_pretrained`` and transform it).
    """
    from fxparam.api import apply_plan

    model = cls.from_pretrained(path, **kwargs)
    plan = plan_in_config(model)
    if plan is None:
        raise LoweringError(
            f"{os.fspath(path)} has no fxparam plan in its config.json: it was not saved from a transformed model. "
            f"Load it with {getattr(cls, '__name__', cls)}.from_pretrained and call fxparam.transform on it."
        )
    return apply_plan(model, plan, init=False)


def retie(model: nn.Module, plan: Plan) -> list[str]:
    """Restore the weight ties the plan recorded (``ParamPlan.tied_to``) that are broken in ``model``.

    ``model.to_empty(device=...)`` of a meta-device model replaces every Parameter by a new one
    (meta storage cannot be swapped in place), so a tied embedding / readout (GPT-2, BERT,
    nanoGPT) comes back as two Parameters: two different weights, trained apart.

    Returns:
        The FQNs re-tied (``"lm_head.weight -> transformer.wte.weight"``).
    """
    names = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    done = []
    for fqn, rule in plan.params.items():
        target = rule.tied_to
        if not target or fqn not in names or target not in names or names[fqn] is names[target]:
            continue
        owner, _, leaf = fqn.rpartition(".")
        if names[fqn].shape != names[target].shape:
            raise LoweringError(f"cannot re-tie {fqn} to {target}: shapes {tuple(names[fqn].shape)} vs "
                                f"{tuple(names[target].shape)}")
        modules[owner]._parameters[leaf] = names[target]
        done.append(f"{fqn} -> {target}")
    return done


@torch.no_grad()
def init_weights(model: nn.Module) -> nn.Module:
    """Initialise a transformed model's weights per its plan (the build-on-meta flow).

    ``transform(meta_model, ..., init=False)`` -> ``model.to_empty(device=...)`` ->
    ``init_weights(model)``: the plan's weight ties are restored (``to_empty`` breaks them, see
    :func:`retie`), then every module's own ``reset_parameters`` runs (norm gains 1,
    biases 0), then the model's ``_init_weights`` if it has one (Hugging Face, nanoGPT), then
    the plan's draws (``init="normal"`` with ``init_std``, ``init="zeros"``), then SμPar masks
    are re-derived from (seed, FQN) and applied.  Buffers that are not fxparam's (RoPE
    tables...) are the model's to recompute.

    Args:
        model: a transformed model on a real device.

    Returns:
        ``model``.

    Raises:
        LoweringError: the model was not transformed, or is still on the meta device.

    Warns:
        UserWarning: parameters the plan keeps ("keep") whose module has no
            ``reset_parameters`` and the model no ``_init_weights``: their values are whatever
            ``to_empty`` left.
    """
    from fxparam.lowering.eager import _reinit

    inner = unwrap(model)
    plan = plan_of(inner)
    if any(p.device.type == "meta" for p in inner.parameters()):
        raise LoweringError(
            f"{type(inner).__name__} is still on the meta device: call model.to_empty(device=...) first"
        )
    retie(inner, plan)  # to_empty from meta gives tied Parameters separate storage (PyTorch's _apply)
    covered: set[int] = set()
    for m in inner.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
            covered.update(id(p) for p in m.parameters(recurse=False))
    own = getattr(inner, "_init_weights", None)
    if callable(own):
        inner.apply(own)
    else:
        names = dict(inner.named_parameters(remove_duplicate=False))
        left = [n for n, p in plan.params.items() if p.init == "keep" and not p.tied_to and n in names
                and id(names[n]) not in covered]
        if left:
            warnings.warn(
                f"fxparam.init_weights: {left[:5]} keep the model's own init, but their modules have no "
                "reset_parameters and the model no _init_weights: set them yourself after init_weights.",
                stacklevel=2,
            )
    if plan.masks:
        from fxparam.lowering.masks import REGISTRY_ATTR, make_mask

        modules = dict(inner.named_modules())
        for name, m in modules.items():
            for pname, buffer in getattr(m, REGISTRY_ATTR, {}).items():
                fqn = f"{name}.{pname}" if name else pname
                mp = plan.masks[fqn]
                getattr(m, buffer).copy_(make_mask(getattr(m, pname).shape, mp.density, mp.seed, fqn,
                                                   device=getattr(m, buffer).device))
    _reinit(inner, plan)
    if plan.masks:
        from fxparam.lowering.masks import enforce_masks

        enforce_masks(inner)
    return model
