"""Hugging Face ``Trainer`` with fxparam's planned param groups.

Left to itself, ``Trainer`` builds one AdamW over two groups (decay / no decay): a transformed
model then trains with a single LR (standard parameterization). ``optimizers=(opt, sched)`` works on
one process, but ``Trainer`` refuses a pre-built optimizer under FSDP. This module hands ``Trainer``
an *optimizer factory* through ``optimizer_cls_and_kwargs``: ``Trainer`` calls it with the model it
trains (after FSDP wrapping), and it returns :func:`fxparam.optimizer` over that model, so every
group carries its planned LR, weight decay and eps. ``Trainer``'s own LR schedulers are ``LambdaLR``
multipliers: they keep the per-group ratios.

Example:
    >>> from fxparam.integrations import hf_trainer
    >>> args = TrainingArguments("out", learning_rate=1e-2, weight_decay=0.1, max_steps=100)
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds,
    ...                   optimizer_cls_and_kwargs=hf_trainer.optimizer_cls_and_kwargs(args))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import OptimizerError
from fxparam.optim import _default_of


class PlannedOptimizerFactory:
    """The factory ``Trainer`` instantiates (no arguments) and calls as ``factory(model, **kwargs)``.

    ``kwargs`` are those of :func:`fxparam.optimizer` plus ``opt_cls`` (default ``torch.optim.AdamW``).
    """

    def __call__(self, model: nn.Module, *, opt_cls: type = torch.optim.AdamW, **kwargs: Any) -> torch.optim.Optimizer:
        from fxparam.optim import optimizer

        return optimizer(model, opt_cls, **kwargs)


#: ``TrainingArguments.optim`` values fxparam maps to a torch class (the same algorithm Trainer would build).
HF_OPTIM_TO_TORCH: dict[str, type] = {
    "adamw_torch": torch.optim.AdamW,
    "adamw_torch_fused": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def _optim_name(args: Any) -> str | None:
    optim = getattr(args, "optim", None)
    return None if optim is None else str(getattr(optim, "value", optim))


def optimizer_cls_and_kwargs(
    args: Any = None,
    opt_cls: type | None = None,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    recipe: Any = None,
    **kwargs: Any,
) -> tuple[type, dict[str, Any]]:
    """The ``Trainer(optimizer_cls_and_kwargs=...)`` value that builds fxparam's planned optimizer.

    Base hyperparameters come from ``args`` (a ``TrainingArguments``: ``learning_rate``,
    ``weight_decay``, ``adam_beta1/2``, ``adam_epsilon`` for Adam-family ``opt_cls``) unless given
    explicitly, or from ``recipe`` (:func:`fxparam.recipes.recommend`, whose units are
    :func:`fxparam.optimizer`'s).

    Args:
        args: the ``TrainingArguments`` (optional when ``lr`` or ``recipe`` is given).
        opt_cls: optimizer class (``torch.optim.AdamW``, ``torch.optim.Muon``, ...). Default: from
            ``args.optim`` (``adamw_torch``/``adamw_torch_fused`` -> ``torch.optim.AdamW``, ``sgd`` ->
            ``torch.optim.SGD``; :data:`HF_OPTIM_TO_TORCH`), or AdamW without ``args``. Trainer ignores
            ``args.optim`` once ``optimizer_cls_and_kwargs`` is given, so an ``args.optim`` with no mapping
            is refused rather than silently replaced by AdamW.
        lr, weight_decay: base values (override ``args``).
        recipe: a :class:`fxparam.recipes.Recipe` instead of ``lr``/``weight_decay``.
        **kwargs: more :func:`fxparam.optimizer` / ``opt_cls`` arguments.

    Returns:
        ``(factory_class, kwargs)`` for ``Trainer``.

    Raises:
        OptimizerError: no LR from any source; ``args.optim`` names an optimizer fxparam does not
            map (pass ``opt_cls=`` explicitly); this transformers has no optimizer factories
            (needs ``transformers.trainer_optimizer.is_optimizer_factory``; then pass
            ``optimizers=(fxparam.optimizer(model, ...), None)`` on one process).
    """
    try:
        from transformers.trainer_optimizer import is_optimizer_factory  # noqa: F401
    except ImportError as exc:
        raise OptimizerError(
            "this transformers version cannot take an optimizer factory in optimizer_cls_and_kwargs; upgrade "
            "transformers, or on one process pass Trainer(optimizers=(fxparam.optimizer(model, ...), None))"
        ) from exc
    optim = _optim_name(args)
    if opt_cls is None:
        if optim is not None and optim not in HF_OPTIM_TO_TORCH:
            raise OptimizerError(
                f"hf_trainer: TrainingArguments.optim={optim!r} has no fxparam mapping, and Trainer ignores "
                "args.optim once optimizer_cls_and_kwargs is given; pass opt_cls= (e.g. torch.optim.AdamW, "
                f"torch.optim.Muon) explicitly. Mapped: {sorted(HF_OPTIM_TO_TORCH)}"
            )
        opt_cls = HF_OPTIM_TO_TORCH.get(optim, torch.optim.AdamW) if optim is not None else torch.optim.AdamW
    out: dict[str, Any] = {"opt_cls": opt_cls, **kwargs}
    if recipe is not None:
        if lr is not None or weight_decay is not None:
            raise OptimizerError("hf_trainer: give recipe= or lr=/weight_decay=, not both")
        out["recipe"] = recipe
    else:
        lr = lr if lr is not None else getattr(args, "learning_rate", None)
        if lr is None:
            raise OptimizerError("hf_trainer: give TrainingArguments, lr= or recipe= (the base LR)")
        out["lr"] = lr
        wd = weight_decay if weight_decay is not None else getattr(args, "weight_decay", 0.0)
        out["weight_decay"] = wd
    if args is not None and isinstance(_default_of(opt_cls, "betas"), tuple):  # Adam family: AdamW, NAdam, RAdam...
        out.setdefault("betas", (args.adam_beta1, args.adam_beta2))
        out.setdefault("eps", args.adam_epsilon)
    return PlannedOptimizerFactory, out


__all__ = ["PlannedOptimizerFactory", "optimizer_cls_and_kwargs"]
