"""Lightning: a ``configure_optimizers`` return value with fxparam's planned param groups.

Example:
    >>> import lightning as L
    >>> from fxparam.integrations.lightning import configure_optimizers
    >>> class LitGPT(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.model = fxparam.transform(GPT(GPTConfig(width=1024)), "completep", base_width=256, base_depth=4)
    ...     def configure_optimizers(self):
    ...         return configure_optimizers(self.model, torch.optim.AdamW, lr=1e-2, weight_decay=0.1,
    ...                                     schedule="d2z", total_steps=self.trainer.estimated_stepping_batches)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from fxparam.errors import OptimizerError


def configure_optimizers(
    model: nn.Module,
    opt_cls: type = torch.optim.AdamW,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    recipe: Any = None,
    schedule: Any = None,
    total_steps: int | None = None,
    warmup_steps: int | None = None,
    on_resize: str = "raise",
    **kwargs: Any,
) -> dict[str, Any]:
    """What a ``LightningModule.configure_optimizers`` returns: the planned optimizer (+ a per-step schedule).

    Args:
        model: the transformed model (e.g. ``self.model``; not the LightningModule wrapping it).
        opt_cls: optimizer class (AdamW, SGD, Muon...), see :func:`fxparam.optimizer`.
        lr, weight_decay: base values (:func:`fxparam.optimizer` units).
        recipe: a :class:`fxparam.recipes.Recipe` instead of ``lr``/``weight_decay``; its schedule is used
            when ``schedule`` is not given.
        schedule: a schedule name (``"d2z"``, ``"cosine"``...) or :class:`fxparam.schedules.Schedule`;
            stepped every optimizer step, relative to each group's own LR (the plan's ratios survive).
        total_steps, warmup_steps: for a schedule given by name.
        on_resize: resuming a checkpoint of a different schedule (see :class:`fxparam.schedules.ScheduleLR`).
        **kwargs: more optimizer arguments.

    Returns:
        ``{"optimizer": opt}`` or ``{"optimizer": opt, "lr_scheduler": {"scheduler": ..., "interval": "step"}}``.

    Raises:
        OptimizerError: see :func:`fxparam.optimizer`; a schedule name without ``total_steps``.
    """
    from fxparam.optim import optimizer
    from fxparam.recipes.schedules import scheduler

    opt = optimizer(model, opt_cls, lr=lr, weight_decay=weight_decay, recipe=recipe, **kwargs)
    if schedule is None and recipe is not None:
        schedule = recipe.schedule
    if schedule is None:
        return {"optimizer": opt}
    if isinstance(schedule, str) and total_steps is None:
        raise OptimizerError(
            f"configure_optimizers: schedule {schedule!r} needs total_steps= "
            "(e.g. self.trainer.estimated_stepping_batches)"
        )
    if isinstance(schedule, str) and not (0 < total_steps < float("inf")):
        # Lightning's trainer.max_steps is -1 when the run is given in epochs
        raise OptimizerError(
            f"configure_optimizers: total_steps={total_steps} is not a number of optimizer updates (Lightning's "
            "trainer.max_steps is -1 for an epoch-based run); pass total_steps=self.trainer.estimated_stepping_batches"
        )
    if isinstance(schedule, str):
        total_steps = int(total_steps)
    extra = {} if not isinstance(schedule, str) else {"total_steps": total_steps, "warmup_steps": warmup_steps}
    sched = scheduler(opt, schedule, on_resize=on_resize, **extra)  # type: ignore[arg-type]
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


__all__ = ["configure_optimizers"]
