"""Option parsing shared by the sub-commands that train models (``coord-check``, ``transfer``).

Argument types give one-line usage errors; :func:`add_run_options` adds the data, device,
dtype, seed, parallelism and progress options both commands take. Nothing heavy is imported
here (``fxparam --help`` builds every parser).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from fxparam.errors import ConfigError, FxparamError

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def int_list(text: str) -> list[int]:
    """Parse ``"64,128,256"`` (``"none"`` -> []) for argparse, with a one-line error."""
    if text.strip().lower() in ("none", ""):
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an integer (use e.g. 64,128,256)") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{value} is not positive")
        out.append(value)
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"repeated value in {text!r}")
    return sorted(out)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def param_list(text: str) -> list[str]:
    """Parse ``"sp,mup,completep"``; names are checked against fxparam's configs."""
    from fxparam.configs import _SHORTCUTS

    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no parameterization given (use e.g. sp,mup,completep)")
    for name in names:
        for part in name.split("+"):
            if part not in _SHORTCUTS:
                raise argparse.ArgumentTypeError(
                    f"unknown parameterization {part!r}; choose from {', '.join(sorted(_SHORTCUTS))} (join with '+')"
                )
    return list(dict.fromkeys(names))


def lr_list(text: str) -> list[float]:
    """Parse ``"2^-12..2^-5"`` (every power of 2 in between) or ``"1e-3,2^-8,0.01"`` for argparse."""
    text = text.replace(" ", "")

    def one(term: str) -> float:
        try:
            value = 2.0 ** int(term[2:]) if term.startswith("2^") else float(term)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{term!r} is not a learning rate (use e.g. 2^-12..2^-5 or 1e-3,3e-3)"
            ) from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{term!r}: learning rates must be positive")
        return value

    if ".." in text:
        lo_text, _, hi_text = text.partition("..")
        if not (lo_text.startswith("2^") and hi_text.startswith("2^")):
            raise argparse.ArgumentTypeError(f"{text!r}: a range is written 2^LO..2^HI, e.g. 2^-12..2^-5")
        lo, hi = one(lo_text), one(hi_text)
        if lo > hi:
            raise argparse.ArgumentTypeError(
                f"{text!r}: the range is empty (the first LR must not exceed the second)"
            )
        return [2.0**k for k in range(round(math.log2(lo)), round(math.log2(hi)) + 1)]
    values = sorted({one(t) for t in text.split(",") if t})
    if not values:
        raise argparse.ArgumentTypeError("no learning rate given")
    return values


def set_help(p: argparse.ArgumentParser, option: str, text: str) -> None:
    """Replace the help of a shared option with this sub-command's default."""
    p._option_string_actions[option].help = text


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Data, device, dtype, seed, progress and parallelism options of the training commands."""
    p.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="train on your data: a text file, token ids (.npy 1-D integers, .bin uint16), or a folder "
        "saved by datasets' save_to_disk (default: Python's documentation, shipped with Python)",
    )
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        default=None,
        help="local tokenizer for text --data (a save_pretrained folder or a tokenizer.json; nothing is "
        "downloaded); default: bytes, vocabulary 256. The built-in GPT and hf: models get its vocabulary size",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help="parameter dtype (default float32)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="worker processes (default: one per CPU core on cpu, 1 on an accelerator)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads per worker (default 1: small models run fastest as parallel processes)",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (it is also off when stderr is not a terminal)",
    )
    p.add_argument("--traceback", action="store_true", help="show the full traceback when a model fails")


def default_jobs(args: argparse.Namespace) -> int:
    """``--jobs``, else one process per core on CPU and one on an accelerator."""
    if args.jobs:
        return int(args.jobs)
    if str(args.device).split(":")[0] != "cpu":
        return 1
    from fxparam.checks.transfer import default_jobs as cores

    return cores()


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr with rate and ETA (off when disabled or stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="run",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
    )


def checked(make: Any, spec: str) -> Any:
    """Wrap a model factory so the user's own exceptions become one-line ConfigErrors."""

    def build(**kwargs: Any) -> Any:
        try:
            return make(**kwargs)
        except FxparamError:
            raise
        except Exception as exc:  # the user's own code: one line, not a traceback
            where = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            raise ConfigError(f"building {spec}({where}) failed: {type(exc).__name__}: {exc}") from exc

    return build


def data_vocab(args: argparse.Namespace, tokens: Any) -> int | None:
    """Vocabulary the data needs (tokenizer size, at least the largest id + 1); None for bytes."""
    from fxparam.checks.data import load_tokenizer, tokenizer_vocab

    need = int(tokens.max()) + 1
    if args.tokenizer is not None:
        need = max(need, tokenizer_vocab(load_tokenizer(args.tokenizer)))
    return need if need > 256 else None
