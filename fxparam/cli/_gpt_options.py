"""Command-line options shared by sub-commands that build the built-in GPT."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_options(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    p.add_argument(
        "--model",
        default="gpt",
        help="'gpt' (built-in), 'hf:<arch>' (gpt2, llama, gpt_neox, bert, mistral, qwen2, mixtral) or "
        "'module.path:factory'",
    )
    if not sweep:
        p.add_argument("--width", type=int, default=None, help="GPT width (d_model)")
        p.add_argument("--depth", type=int, default=None, help="GPT number of blocks")
    p.add_argument("--heads", type=int, default=None, help="GPT heads (head dim then grows with width)")
    p.add_argument("--head-dim", type=int, default=None, help="GPT fixed head dim (default 32)")
    p.add_argument("--mlp", choices=["gelu", "swiglu"], default=None)
    p.add_argument("--norm", choices=["layernorm", "rmsnorm"], default=None)
    p.add_argument("--pos", choices=["learned", "rope", "alibi"], default=None)
    p.add_argument("--parallel-residual", action="store_true", default=None)
    p.add_argument("--tie-embeddings", action="store_true", default=None)
    p.add_argument("--no-bias", dest="bias", action="store_false", default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)


def gpt_options(args: argparse.Namespace) -> dict[str, Any]:
    from fxparam.checks.targets import MODEL_OPTIONS  # at run time: parsers stay free of torch (fast --help)

    return {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k, None) is not None}
