"""``fxparam recipe``: batch size, weight decay, warmup, schedule and timescale for a run."""

from __future__ import annotations

import argparse
import json
import math
import re

#: LR schedules ``recommend`` knows (kept in step with ``fxparam.recipes.schedules.SCHEDULE_NAMES``
#: by tests/cli/test_cli_recipe.py; written out here so ``--help`` needs no import of the recipes).
SCHEDULE_CHOICES = ("d2z", "linear", "cosine", "wsd", "constant")

_EPILOG = """\
examples:
  fxparam recipe --params 610M --tokens 48.5B --seq-len 2048 --base-lr 1.62e-2 --width-multiplier 8
  fxparam recipe --params 1B --tpp 20                # no LR yet: batch, warmup, schedule, lambda x LR

Sizes take K, M, B (or G) and T suffixes (1B = 1e9) or plain numbers (610e6).
The peak LR of the hidden weights is --lr, or --base-lr / --width-multiplier (muP / CompleteP with Adam).
Without an LR, the weight decay is given as the product lambda x LR that holds tau at tau_opt.
Defaults follow Power Lines (tau_opt = 1.084 TPP^-0.527, B_opt = 0.0306 D^0.383 sequences of 2048);
they are defaults to recalibrate (see fxparam.recipes.LawConstants and fit_power_law).
Exit status: 0 on success, 2 on bad input.
"""

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_SIZE = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)


def size(text: str) -> float:
    """Parse a count such as ``1B``, ``20B``, ``610M``, ``1.5T`` or ``610e6`` (argparse type).

    Raises:
        argparse.ArgumentTypeError: not a size, or not positive (argparse names the flag).

    Example:
        >>> size("1B"), size("610M"), size("48.5e9")
        (1000000000.0, 610000000.0, 48500000000.0)
    """
    m = _SIZE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (use e.g. 1B, 610M, 48.5e9)")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not (value > 0 and math.isfinite(value)):  # every size here counts something: N, D, TPP, tokens
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive size (e.g. 1B, 610M, 48.5e9)")
    return value


#: argparse reads a token that starts with '-' as an option unless it looks like a negative number,
#: and its test (Python < 3.13: '-5' or '-.5' only) misses '-1B' and '-5e9': '--params -1B' was
#: "expected one argument". Python 3.13's test ('-' then a digit) lets the size validator name the
#: flag and say why; no option of ``recipe`` starts with a digit, so nothing else changes.
_NEGATIVE_NUMBER = re.compile(r"^-\.?[0-9]")


def _bounded(name: str, lo: float, hi: float, why: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (lo < value <= hi and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{name} {value:g} is outside ({lo:g}, {hi:g}]: {why}")
        return value

    return parse


#: An AdamW learning rate above 1 is a typo (3 instead of 3e-3), not a setting.
lr_value = _bounded("the learning rate", 0.0, 1.0, "AdamW peak LRs are far below 1 (e.g. 3e-3)")
weight_decay_value = _bounded("the weight decay", 0.0, 10.0, "coupled AdamW lambda is typically 0.01 - 1")
multiplier_value = _bounded("the width multiplier", 0.0, 1e6, "d_model / proxy d_model")


def positive_int(text: str) -> int:
    try:
        value = size(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(value)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``recipe`` sub-command."""
    p = subparsers.add_parser(
        "recipe",
        help="recommend batch size, weight decay, warmup and schedule (D2Z, Power Lines)",
        description="Recommend a hyperparameter recipe from model size N, tokens D and (optionally) the LR.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p._negative_number_matcher = _NEGATIVE_NUMBER  # see _NEGATIVE_NUMBER
    p.add_argument("--params", type=size, required=True, help="model parameters N (e.g. 1B, 610M, 610e6)")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--tokens", type=size, help="training tokens D (e.g. 20B, 48.5e9)")
    amount.add_argument("--tpp", type=size, help="tokens per parameter (D = TPP x N; e.g. 20)")
    p.add_argument("--seq-len", type=positive_int, default=2048, help="sequence length in tokens (default 2048)")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--base-lr", type=lr_value, help="tuned base LR of the proxy model (0 < LR <= 1)")
    lr.add_argument("--lr", type=lr_value, help="peak effective LR of the hidden weights (0 < LR <= 1)")
    p.add_argument(
        "--width-multiplier", type=multiplier_value, default=1.0, help="d_model / proxy d_model (default 1)"
    )
    p.add_argument("--batch-size", type=positive_int, help="batch size in sequences (default: B_opt)")
    p.add_argument("--weight-decay", type=weight_decay_value, help="base coupled weight decay lambda, the units of fxparam.optimizer (hidden weights decay with "
                   "lambda x width multiplier; default: lambda_opt)")
    p.add_argument("--schedule", choices=SCHEDULE_CHOICES, default="d2z", help="LR schedule (default d2z)")
    p.add_argument(
        "--b-crit",
        type=size,
        nargs=2,
        metavar=("B_CRIT_TOKENS", "AT_TOKENS"),
        help="a measured critical batch (tokens) at a token count; extrapolated as D^0.462",
    )
    p.add_argument("--json", action="store_true", help="print the recipe as JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute and print the recipe."""
    from fxparam.errors import RecipeError
    from fxparam.recipes import recommend

    has_lr = args.lr is not None or args.base_lr is not None
    if args.b_crit and args.b_crit[0] > args.b_crit[1]:
        # one batch cannot hold more tokens than were trained when it was measured (review R17b:
        # '--b-crit 1e15 1B' was accepted); a swapped pair is the likely cause
        raise RecipeError(
            f"--b-crit {args.b_crit[0]:g} {args.b_crit[1]:g}: a critical batch of {args.b_crit[0]:g} tokens measured "
            f"after {args.b_crit[1]:g} tokens is larger than all the tokens trained by then; the order is "
            "B_CRIT_TOKENS AT_TOKENS (e.g. --b-crit 1M 10B)"
        )
    if not has_lr and args.weight_decay is not None:
        raise RecipeError("--weight-decay without an LR: give --lr or --base-lr to compute tau")
    recipe = recommend(
        params=args.params,
        tokens=args.tokens,
        tpp=args.tpp,
        seq_len=args.seq_len,
        # without an LR: computed at LR 1, so lambda_opt is the product lambda x LR
        lr=args.lr if has_lr else 1.0,
        base_lr=args.base_lr,
        width_multiplier=args.width_multiplier,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        b_crit_measured=tuple(args.b_crit) if args.b_crit else None,
    )
    if has_lr:
        if args.json:
            print(json.dumps(json.loads(recipe.model_dump_json()), indent=2))
        else:
            print(recipe.table())
        return 0
    # computed at LR 1: lambda x LR is the same product in base and effective (hidden) units
    lam_lr = recipe.hidden_weight_decay * recipe.hidden_lr
    rows = {
        "params N": f"{recipe.params:.4g}",
        "tokens D": f"{recipe.tokens:.4g}",
        "tokens/param TPP": f"{recipe.tpp:.4g}",  # .2f printed 0.00 at TPP 0.001 (review R17b)
        "seq len": f"{recipe.seq_len}",
        "batch B": f"{recipe.batch_size} seq = {recipe.batch_tokens:,} tokens (B_opt {recipe.b_opt:.1f} seq)",
        "steps": f"{recipe.steps:,}",
        "warmup": f"{recipe.warmup_steps:,} steps",
        "schedule": args.schedule,
        "tau_opt": f"{recipe.tau_opt:.4g}",  # .4f printed 0.0000 at TPP 1e9 (review R17b)
        "lambda x LR": f"{lam_lr:.4g} (weight decay = this / LR, to hold tau at tau_opt)",
    }
    if args.json:
        print(json.dumps({**{k: v for k, v in json.loads(recipe.model_dump_json()).items()
                             if k in ("params", "tokens", "tpp", "seq_len", "batch_size", "batch_tokens", "steps",
                                      "warmup_steps", "schedule", "tau_opt", "b_opt", "b_crit_tokens", "constants")},
                          "lambda_times_lr": lam_lr, "lr": None, "weight_decay": None}, indent=2))
        return 0
    width = max(map(len, rows))
    print("\n".join([f"{k:<{width}}  {v}" for k, v in rows.items()] + [
        "",
        "no LR given: pass --lr (or --base-lr with --width-multiplier) for the weight decay and the per-group table",
    ]))
    return 0
