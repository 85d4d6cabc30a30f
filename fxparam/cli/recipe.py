"""``fxparam recipe``: batch size, weight decay, warmup, schedule and timescale for a run."""

from __future__ import annotations

import argparse
import json

from fxparam.recipes import recommend
from fxparam.recipes.schedules import SCHEDULE_NAMES

_EPILOG = """\
example:
  fxparam recipe --params 610e6 --tokens 48.5e9 --seq-len 2048 --base-lr 1.62e-2 --width-multiplier 8

The peak LR of the hidden weights is --lr, or --base-lr / --width-multiplier (muP / CompleteP with Adam).
Defaults follow Power Lines (tau_opt = 1.084 TPP^-0.527, B_opt = 0.0306 D^0.383 sequences of 2048);
they are defaults to recalibrate (see fxparam.recipes.LawConstants and fit_power_law).
Exit status: 0 on success, 2 on bad input.
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``recipe`` sub-command."""
    p = subparsers.add_parser(
        "recipe",
        help="recommend batch size, weight decay, warmup and schedule (D2Z, Power Lines)",
        description="Recommend a hyperparameter recipe from model size N, tokens D and the learning rate.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", type=float, required=True, help="model parameters N (e.g. 610e6)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--tokens", type=float, help="training tokens D (e.g. 48.5e9)")
    size.add_argument("--tpp", type=float, help="tokens per parameter (D = TPP x N)")
    p.add_argument("--seq-len", type=int, default=2048, help="sequence length in tokens (default 2048)")
    lr = p.add_mutually_exclusive_group(required=True)
    lr.add_argument("--base-lr", type=float, help="tuned base LR of the proxy model")
    lr.add_argument("--lr", type=float, help="peak effective LR of the hidden weights")
    p.add_argument("--width-multiplier", type=float, default=1.0, help="d_model / proxy d_model (default 1)")
    p.add_argument("--batch-size", type=int, help="batch size in sequences (default: B_opt)")
    p.add_argument("--weight-decay", type=float, help="coupled weight decay lambda (default: lambda_opt)")
    p.add_argument("--schedule", choices=SCHEDULE_NAMES, default="d2z", help="LR schedule (default d2z)")
    p.add_argument(
        "--b-crit",
        type=float,
        nargs=2,
        metavar=("B_CRIT_TOKENS", "AT_TOKENS"),
        help="a measured critical batch (tokens) at a token count; extrapolated as D^0.462",
    )
    p.add_argument("--json", action="store_true", help="print the recipe as JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute and print the recipe."""
    recipe = recommend(
        params=args.params,
        tokens=args.tokens,
        tpp=args.tpp,
        seq_len=args.seq_len,
        lr=args.lr,
        base_lr=args.base_lr,
        width_multiplier=args.width_multiplier,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        b_crit_measured=tuple(args.b_crit) if args.b_crit else None,
    )
    if args.json:
        print(json.dumps(json.loads(recipe.model_dump_json()), indent=2))
    else:
        print(recipe.table())
    return 0
