"""Shared helpers for the GNS tests: a tiny GPT and brute-force per-example gradients."""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call, grad, vmap

from fxparam.gns import swap_norms, unbiased_estimates, unswap_norms
from fxparam.models.gpt import GPT, GPTConfig


def tiny_gpt(norm: str = "layernorm", bias: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(width=32, depth=2, head_dim=16, vocab=64, seq_len=16, norm=norm, bias=bias))  # type: ignore[arg-type]
    with torch.no_grad():  # non-trivial norm parameters so every gradient term is exercised
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def batch(B: int, T: int = 12, vocab: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (B, T), generator=g)
    tgt = torch.randint(0, vocab, (B, T), generator=g)
    return idx, tgt


def per_example_grads(
    model: torch.nn.Module, idx: torch.Tensor, tgt: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{param FQN: (B, *shape)}``: gradient of each example's own (token-mean) loss, by vmap(grad)."""
    plain = copy.deepcopy(model)
    unswap_norms(plain)  # the custom autograd Functions have no vmap rule; use torch's modules
    params = {k: v.detach() for k, v in plain.named_parameters()}

    def loss_one(p, i, t):
        return functional_call(plain, p, (i[None], t[None]))[1]

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, idx, tgt)


def brute_force_estimates(
    per: dict[str, torch.Tensor], names: list[str]
) -> tuple[float, float, float, float]:
    """(g2, trace, s_small, s_big) over the parameters ``names`` from per-example gradients."""
    flat = torch.cat([per[n].flatten(1).double() for n in names], dim=1)  # (B, P)
    B = flat.shape[0]
    s_small = float(flat.pow(2).sum(1).mean())
    s_big = float(flat.mean(0).pow(2).sum())
    g2, tr = unbiased_estimates(s_small, s_big, B)
    return g2, tr, s_small, s_big


def swapped_tiny_gpt(norm: str = "layernorm", bias: bool = True, seed: int = 0) -> GPT:
    model = tiny_gpt(norm, bias, seed)
    swap_norms(model)
    return model
