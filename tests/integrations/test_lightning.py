"""Lightning: configure_optimizers gives Trainer the planned groups and a relative per-step schedule."""

from __future__ import annotations

import warnings

import pytest
import torch

import fxparam
from fxparam.integrations.lightning import configure_optimizers
from fxparam.models import GPT, GPTConfig

L = pytest.importorskip("lightning")

LR, M_D = 1e-2, 4  # width 64 / base 16


def _loader() -> torch.utils.data.DataLoader:
    x = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=2)


class LitGPT(L.LightningModule):
    def __init__(self, planned: bool) -> None:
        super().__init__()
        self.model = fxparam.transform(GPT(GPTConfig(width=64, depth=2, head_dim=16)), "mup", base_width=16)
        self.planned = planned

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.model(x, x)[1]

    def configure_optimizers(self):
        if not self.planned:  # control: what people write by default
            return torch.optim.AdamW(self.parameters(), lr=LR)
        return configure_optimizers(self.model, torch.optim.AdamW, lr=LR, weight_decay=0.1, schedule="d2z",
                                    total_steps=8, warmup_steps=2)


def _fit(module: L.LightningModule, steps: int) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, _loader())
    return trainer


def test_lightning_fit_with_planned_groups_and_d2z() -> None:
    module = LitGPT(planned=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fxparam.optim.PlanLRWarning)
        trainer = _fit(module, 3)
    opt = trainer.optimizers[0]
    group = {n: g for g in opt.param_groups for n in g["param_names"]}
    hidden, emb = group["blocks.0.attn.qkv.weight"], group["wte.weight"]
    assert hidden["initial_lr"] == pytest.approx(LR / M_D) and emb["initial_lr"] == pytest.approx(LR)  # muP table
    # D2Z over 8 updates with 2 warmup, after 3 scheduler steps: m(3) = 1 - (3-2)/(6-1) = 0.8 (by hand)
    assert emb["lr"] == pytest.approx(LR * 0.8) and hidden["lr"] == pytest.approx(LR / M_D * 0.8)


def test_lightning_control_default_optimizer_is_flagged() -> None:
    with pytest.warns(UserWarning, match="standard parameterization"):
        _fit(LitGPT(planned=False), 1)


def test_schedule_name_needs_total_steps() -> None:
    model = fxparam.transform(GPT(GPTConfig(width=64, depth=1, head_dim=16)), "mup", base_width=16)
    with pytest.raises(fxparam.OptimizerError, match="total_steps"):
        configure_optimizers(model, lr=LR, schedule="d2z")
    assert set(configure_optimizers(model, lr=LR)) == {"optimizer"}


class EpochLitGPT(LitGPT):
    def __init__(self, total: str) -> None:
        super().__init__(planned=True)
        self.total = total

    def configure_optimizers(self):
        return configure_optimizers(self.model, torch.optim.AdamW, lr=LR, schedule="d2z",
                                    total_steps=getattr(self.trainer, self.total), warmup_steps=0)


def test_epoch_based_run_needs_the_estimated_number_of_updates() -> None:
    """An epoch-based Trainer has max_steps == -1: refused with the fix, which then gives 8 / 2 = 4 updates."""
    def fit(module):
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, _loader())
        return trainer

    with pytest.raises(fxparam.OptimizerError, match="estimated_stepping_batches"):
        fit(EpochLitGPT("max_steps"))
    trainer = fit(EpochLitGPT("estimated_stepping_batches"))
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched._fx_schedule.total_steps == 4  # 8 samples, batch 2, one epoch
