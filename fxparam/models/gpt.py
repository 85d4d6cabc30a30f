"""The reference GPT: a plain pre-norm decoder written the way people write one.

It is deliberately ordinary (nanoGPT-like names, SDPA attention, GPT-2 init) so that
fxparam's analysis is exercised on real code, not on a model shaped for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxparam.models.alibi import alibi_bias, alibi_slopes


@dataclass(frozen=True)
class GPTConfig:
    """Shape and options of the reference GPT.

    Attributes:
        width: residual stream size d_model.
        depth: number of transformer blocks.
        heads: number of attention heads. When set, head_dim = width // heads grows with
            width; when None, ``head_dim`` is fixed and the number of heads grows instead.
        head_dim: per-head size used when ``heads`` is None.
        vocab: vocabulary size (256 = bytes).
        seq_len: maximum sequence length (size of the learned position table).
        mlp: "gelu" (4x MLP) or "swiglu" (gated, 8/3 x hidden).
        mlp_ratio: hidden size of the MLP as a multiple of width (gelu; swiglu uses 2/3 of it).
        norm: "layernorm" or "rmsnorm".
        parallel_residual: GPT-J / NeoX style x + attn(ln1 x) + mlp(ln2 x).
        tie_embeddings: share the token embedding with the output projection.
        bias: biases in linear layers and LayerNorm.
        pos: "learned" position table, "rope" rotary, or "alibi" linear biases.
        dropout: dropout probability (residual and attention).
    """

    width: int = 256
    depth: int = 4
    heads: int | None = None
    head_dim: int = 32
    vocab: int = 256
    seq_len: int = 128
    mlp: Literal["gelu", "swiglu"] = "gelu"
    mlp_ratio: float = 4.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    parallel_residual: bool = False
    tie_embeddings: bool = False
    bias: bool = True
    pos: Literal["learned", "rope", "alibi"] = "learned"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.depth < 0 or self.vocab <= 0 or self.seq_len <= 0:
            raise ValueError(f"GPTConfig: sizes must be positive, got {self}")
        if self.n_heads * self.head_size != self.width:
            raise ValueError(
                f"GPTConfig: width={self.width} is not divisible into heads "
                f"(heads={self.heads}, head_dim={self.head_dim}); pick width as a multiple of the head size"
            )
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"GPTConfig: mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"GPTConfig: norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.pos not in ("learned", "rope", "alibi"):
            raise ValueError(f"GPTConfig: pos must be 'learned', 'rope' or 'alibi', got {self.pos!r}")
        if self.pos == "rope" and self.head_size % 2:
            raise ValueError(f"GPTConfig: rope needs an even head size, got {self.head_size}")

    @property
    def n_heads(self) -> int:
        return self.heads if self.heads is not None else max(1, self.width // self.head_dim)

    @property
    def head_size(self) -> int:
        return self.width // self.heads if self.heads is not None else self.head_dim

    @property
    def mlp_hidden(self) -> int:
        if self.mlp == "swiglu":
            return int(round(self.mlp_ratio * self.width * 2 / 3))
        return int(round(self.mlp_ratio * self.width))

    def replace(self, **changes: object) -> GPTConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.width, eps=1e-5)
    return nn.LayerNorm(cfg.width, bias=cfg.bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables for rotary position embeddings (not trained)."""

    def __init__(self, head_size: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2).float() / head_size))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)  # (T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
        return emb.cos(), emb.sin()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_size = cfg.head_size
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.scale = 1.0 / math.sqrt(self.head_size)  # logit scale handed to SDPA

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            cos, sin = rope  # (T, hs)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_bias,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_bias is None,
            scale=self.scale,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "swiglu"
        hidden = cfg.mlp_hidden
        if self.gated:
            self.gate = nn.Linear(cfg.width, hidden, bias=cfg.bias)
        self.fc = nn.Linear(cfg.width, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.width, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            h = F.silu(self.gate(x)) * self.fc(x)  # (B, T, hidden)
        else:
            h = F.gelu(self.fc(x))  # (B, T, hidden)
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.ln_1 = _norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = _norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope=None, attn_bias=None) -> torch.Tensor:
        if self.parallel:
            return x + self.drop(self.attn(self.ln_1(x), rope, attn_bias)) + self.drop(self.mlp(self.ln_2(x)))
        x = x + self.drop(self.attn(self.ln_1(x), rope, attn_bias))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    """Decoder-only transformer language model.

    Example:
        >>> model = GPT(GPTConfig(width=64, depth=2))
        >>> model(torch.zeros(1, 8, dtype=torch.long)).shape
        torch.Size([1, 8, 256])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.wte = nn.Embedding(cfg.vocab, cfg.width)
        if cfg.pos == "learned":
            self.wpe = nn.Embedding(cfg.seq_len, cfg.width)
        elif cfg.pos == "rope":
            self.rotary = Rotary(cfg.head_size)
        else:
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.ln_f = _norm(cfg)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(cfg.depth, 1)))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def example_inputs(self, batch: int = 2, seq: int = 8) -> tuple[torch.Tensor]:
        """Token ids fit for ``fxparam.inspect`` (on the device of the model)."""
        device = self.wte.weight.device
        seq = min(seq, self.config.seq_len)
        return (torch.zeros(batch, seq, dtype=torch.long, device=device),)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits ``(B, T, vocab)``; with ``targets``, ``(logits, mean cross-entropy)``."""
        B, T = idx.shape
        if T > self.config.seq_len:
            raise ValueError(f"GPT: sequence of length {T} exceeds seq_len={self.config.seq_len}")
        x = self.wte(idx)  # (B, T, C)
        rope = attn_bias = None
        if self.config.pos == "learned":
            pos = torch.arange(T, device=idx.device)
            x = x + self.wpe(pos)  # (B, T, C)
        elif self.config.pos == "rope":
            rope = self.rotary(T)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            bias = alibi_bias(self.alibi_slopes, T)  # (nh, T, T)
            attn_bias = bias.masked_fill(~causal, float("-inf")).to(x.dtype)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, attn_bias)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
