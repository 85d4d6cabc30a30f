"""Models, configs and a training loop shared by the lowering tests.

Every case is small (width 32-64, depth 2) so that a compile stays cheap. Configs set
non-trivial multipliers everywhere: embedding and readout multipliers, an attention
scale that differs from 1/sqrt(d_head) (base_head_dim), and depth factors (CompleteP).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import fxparam
from fxparam.lowering import unwrap
from fxparam.models.gpt import GPT, GPTConfig

VOCAB = 256
BATCH, SEQ = 2, 16

MUP = {"base_width": 16, "base_head_dim": 8, "embedding_multiplier": 2.0, "output_multiplier": 1.5}
COMPLETEP = {**MUP, "base_depth": 1}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "mup": ("mup", MUP),
    "completep": ("completep", COMPLETEP),
    "completep+supar": ("completep+supar", {**COMPLETEP, "density": 0.5}),
    "completep+gns": ("completep+gns", COMPLETEP),
}

GPT_OPTIONS: dict[str, dict[str, Any]] = {
    "gelu-learned": {},
    "swiglu-rms-rope-tied": {"mlp": "swiglu", "norm": "rmsnorm", "pos": "rope", "tie_embeddings": True,
                             "bias": False},
    "parallel-alibi": {"parallel_residual": True, "pos": "alibi"},
}


@dataclass(eq=False)  # hashed by identity: module-level cases key per-case caches
class Case:
    """A model factory and how to call it."""

    name: str
    make: Callable[[], nn.Module]
    hf: bool = False

    def inputs(self, idx: torch.Tensor) -> Any:
        """``example_inputs`` for fxparam (kwargs for HF models)."""
        return {"input_ids": idx} if self.hf else (idx,)

    def logits(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=idx) if self.hf else model(idx)
        return out.logits if self.hf else out


def gpt_case(option: str, width: int = 32, depth: int = 2) -> Case:
    cfg = GPTConfig(width=width, depth=depth, heads=2, vocab=VOCAB, seq_len=32, **GPT_OPTIONS[option])
    return Case(f"gpt-{option}", lambda: GPT(cfg))


def hf_case(arch: str) -> Case:
    from fxparam.models.hf import hf_model

    overrides: dict[str, Any] = {}
    if arch == "gpt2":  # GPT-2's configs default to dropout 0.1: runs must be deterministic
        overrides = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return Case(f"hf-{arch}", lambda: hf_model(arch, **overrides), hf=True)


def batch(seed: int, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * seed + step)
    idx = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def loss_of(case: Case, model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = case.logits(model, idx)
    return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


@dataclass
class Run:
    """What one lowering produced: first-step logits and gradients, losses over the steps."""

    logits: torch.Tensor
    grads: dict[str, torch.Tensor]
    losses: list[float]
    init: dict[str, torch.Tensor]
    lrs: list[tuple[list[str], float, float, float]]


def train(case: Case, model: nn.Module, *, steps: int = 5, lr: float = 1e-2, seed: int = 0) -> Run:
    """Five AdamW steps with ``fxparam.optimizer``; records the first step in full."""
    params = dict(unwrap(model).named_parameters())
    init = {n: p.detach().clone() for n, p in params.items()}
    opt = fxparam.optimizer(model, torch.optim.AdamW, lr=lr, weight_decay=0.1, eps=1e-8)
    lrs = [(sorted(g["param_names"]), g["lr"], g["weight_decay"], g["eps"]) for g in opt.param_groups]
    losses: list[float] = []
    first_logits = None
    grads: dict[str, torch.Tensor] = {}
    for step in range(steps):
        idx, targets = batch(seed, step)
        opt.zero_grad(set_to_none=True)
        logits, loss = loss_of(case, model, idx, targets)
        loss.backward()
        if step == 0:
            first_logits = logits.detach().clone()
            grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
        losses.append(loss.item())
        opt.step()
    assert first_logits is not None
    return Run(first_logits, grads, losses, init, lrs)


def fresh(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
