"""``fxparam transfer``: does the best learning rate stay put as the model grows?

Trains the built-in GPT at several widths (or depths) over a grid of learning rates under
SP and muP (or muP and CompleteP over depth), on real text for a fixed token budget; plots
held-out loss vs LR per size, one panel per parameterization, and reports the optimal LR
per size and how far it moves.  Finished runs are kept in a JSON-lines file in the output
folder, so re-running skips them (and an interrupted sweep resumes).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from fxparam.cli._common import (  # noqa: F401  (lr_list: re-exported, its old home)
    add_run_options,
    default_jobs,
    int_list,
    lr_list,
    param_list,
    positive_float,
    positive_int,
    progress_bar,
    set_help,
)
from fxparam.cli._gpt_options import add_model_options, gpt_options
from fxparam.errors import ConfigError, FxparamError

#: Shipped sweeps: (sizes, lr exponents lo..hi, steps) for each (vary, quick).
#: Over width, muP's output multiplier alpha_out = 8 is a base hyperparameter tuned at width 32
#: (held-out loss at the best LR, 200 steps, 2 seeds: alpha_out 1: 2.57, 2: 2.49, 4: 2.39, 8: 2.36,
#: 16: 2.36; docs/results.md); with the untuned 1, SP beat muP at width 128 in --quick.
PRESETS: dict[tuple[str, bool], dict[str, Any]] = {
    # 2^-11..2^-4: with alpha_out = 8 muP's optimum at widths 128-256 lies at 2^-6..2^-5 (the old 2^-12..2^-6
    # grid put it on the edge; 2^-12 was the worst LR of every run)
    ("width", False): {"sizes": [32, 64, 128, 256], "lr_range": (-11, -4), "steps": 400, "output_multiplier": 8.0},
    ("width", True): {"sizes": [32, 64, 128], "lr_range": (-11, -6), "steps": 200, "output_multiplier": 8.0},
    ("depth", False): {"sizes": [2, 4, 8, 16], "lr_range": (-11, -5), "steps": 400, "output_multiplier": 1.0},
    ("depth", True): {"sizes": [2, 4, 8], "lr_range": (-10, -6), "steps": 200, "output_multiplier": 1.0},
}

_EPILOG = """\
examples:
  fxparam transfer                 # widths 32..256, SP vs muP, LRs 2^-11..2^-4, 400 steps
  fxparam transfer --quick         # widths 32..128, LRs 2^-11..2^-6, 200 steps
  fxparam transfer --vary depth    # depths 2..16 at width 64, muP vs CompleteP
  fxparam transfer --widths 64,128,256,512 --seeds 3   # wider and averaged (much longer)
  fxparam transfer --widths 64,128 --lrs 2^-10..2^-6 --steps 50 --out /tmp/t
  fxparam transfer --model mymodel:make --data corpus.txt --device cuda --seeds 3   # your model and data

Cost (measured, built-in GPT, CPU): --quick trains 36 runs in about 140 CPU-seconds (1-2 min on
2 idle cores; 13.5 min measured on 2 cores shared with ~16 busy processes); the default trains 64
runs in about 810 CPU-seconds (~7 min when 2 idle cores split it, --jobs 2; 32 min measured in 1 process
on 2 cores shared with other jobs). Wall time scales with the idle cores.

Every run: AdamW from fxparam.optimizer (the plan's per-group LRs), warmup then linear decay
to zero (fxparam.recipes.schedules.d2z), byte tokens of Python's documentation (or --data), the same
batches for every run; loss measured on the held-out tail.  The LR on the x axis is the base
LR: the LR of the base model (the smallest width), which muP rescales per parameter group.
muP's output multiplier alpha_out is a base hyperparameter too (--output-multiplier, 8 over
width for the built-in GPT: tuned at width 32; 1 for other models). The summary checks muP's promise "wider is better": at each width's
best LR the held-out loss must not rise (SP is shown for comparison).

Re-running with the same settings re-uses finished runs from DIR/<vary>.jsonl (--fresh
starts over; --lrs or --widths that add points train only the new ones).  Exit status: 0 on success, 2 on bad options.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``transfer`` sub-command."""
    p = sub.add_parser(
        "transfer",
        help="LR transfer: train several widths (or depths) over an LR grid under SP / muP / CompleteP",
        description="The classic muP demonstration: held-out loss vs learning rate at several widths\n"
        "(or depths); under muP (CompleteP) the best LR should stay put, under SP it moves.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p, sweep=True)
    set_help(p, "--head-dim", "GPT fixed head dim (default 16 here; heads grow with width)")
    set_help(p, "--seq-len", "sequence length in bytes, or tokens of --tokenizer / a token file (default 64 here)")
    p.add_argument("--vary", choices=["width", "depth"], default="width", help="what grows (default width)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smaller sweep (~140 CPU-seconds: 1-2 min on 2 idle cores; the default ~810 CPU-seconds)",
    )
    p.add_argument(
        "--param",
        type=param_list,
        default=None,
        metavar="NAMES",
        help="parameterizations (default sp,mup over width; mup,completep over depth)",
    )
    p.add_argument("--widths", type=int_list, default=None, metavar="W1,W2,...", help="widths (--vary width)")
    p.add_argument("--depths", type=int_list, default=None, metavar="D1,D2,...", help="depths (--vary depth)")
    p.add_argument(
        "--width", type=positive_int, default=None, help="fixed width for --vary depth (default 64)"
    )
    p.add_argument(
        "--depth", type=positive_int, default=None, help="fixed depth for --vary width (default 2)"
    )
    p.add_argument(
        "--lrs",
        type=lr_list,
        default=None,
        metavar="2^LO..2^HI|LR,LR,...",
        help="base learning rates: a power-of-2 grid such as 2^-11..2^-4 (the default over width), "
        "or a list such as 1e-3,3e-3",
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="updates per run (default 400; --quick 200)"
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per update (default 8)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument(
        "--output-multiplier",
        type=positive_float,
        default=None,
        metavar="ALPHA_OUT",
        help="muP/CompleteP output multiplier alpha_out at the base width, a base hyperparameter "
        "(default 8 over width for the built-in GPT, tuned at width 32; 1 over depth and for any other "
        "model: muP at the base width is then the model as written; tune it like the LR)",
    )
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds per point, averaged (default 1)")
    p.add_argument("--eval-batches", type=positive_int, default=16, help="held-out batches (default 16)")
    p.add_argument(
        "--out", default="fxparam-transfer", metavar="DIR", help="output folder (default ./fxparam-transfer)"
    )
    p.add_argument(
        "--fresh", action="store_true", help="ignore runs recorded in DIR and train everything again"
    )
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG plot")
    add_run_options(p)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`fxparam.checks.transfer.transfer` for the parsed options."""
    from fxparam.checks.transfer import DEFAULT_PARAMS, GPT_OPTIONS, lr_grid

    preset = PRESETS[(args.vary, args.quick)]
    if args.vary == "width" and args.depths is not None:
        raise ConfigError("--depths applies to --vary depth; over width set the fixed depth with --depth")
    if args.vary == "depth" and args.widths is not None:
        raise ConfigError("--widths applies to --vary width; over depth set the fixed width with --width")
    sizes = (args.widths if args.vary == "width" else args.depths) or preset["sizes"]
    if len(sizes) < 2:
        raise ConfigError(f"give at least two {args.vary}s to compare")
    fixed = args.depth if args.vary == "width" else args.width
    if not args.model.startswith("hf:") and args.model != "gpt":
        from fxparam.cli.coord_check import factory_takes_depth

        if not factory_takes_depth(args.model):  # review R17b: was refused after the run banner, as a "sweep"
            raise ConfigError(
                f"{args.model}: the factory takes no 'depth' argument, and transfer builds every model at a depth "
                + ("it sweeps (--vary depth)" if args.vary == "depth" else
                   "(--depth, default 2; each width at the same depth)")
                + ": give the factory a depth argument (e.g. make(width, depth=2)); coord-check --depths none "
                "runs such a factory at its own depth"
            )
    lrs = args.lrs or lr_grid(*preset["lr_range"])
    # model options reach every kind of model (hf: config fields, factories: keyword arguments) or are refused
    options = {**GPT_OPTIONS, **gpt_options(args)} if args.model == "gpt" else gpt_options(args)
    seq_len = options.pop("seq_len", None) or 64
    if args.model.startswith("hf:") and args.seq_len is not None:
        options["seq_len"] = seq_len  # also the model's own position table (a factory gets batches of it)
    return {
        "model": args.model,
        "model_options": options,
        "vary": args.vary,
        "sizes": sizes,
        "fixed": fixed,
        "params": args.param or list(DEFAULT_PARAMS[args.vary]),
        "lrs": lrs,
        "steps": args.steps or preset["steps"],
        "batch_size": args.batch_size,
        "seq_len": seq_len,
        "weight_decay": args.weight_decay,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "eval_batches": args.eval_batches,
        "data": args.data,
        "tokenizer": args.tokenizer,
        # alpha_out 8 was tuned on the built-in GPT; another model gets 1, muP at the base width being the
        # model as written (review R17b: a user's factory got the GPT's 8 silently, so its muP and SP
        # runs differed at the base width)
        "output_multiplier": args.output_multiplier or (preset["output_multiplier"] if args.model == "gpt" else 1.0),
        "device": args.device,
        "dtype": args.dtype,
    }


def _epochs_note(args: argparse.Namespace, tokens_per_run: int) -> str:
    """A warning when each run reads the training split of --data more than once (review R17b).

    A run of ``steps x batch x seq_len`` tokens drawn from fewer training tokens repeats them:
    the held-out loss then rewards memorisation too, and the best LR can move with the epoch count
    (the sweep no longer measures the transfer of a single-pass pre-training LR).
    """
    if args.data is None:
        return ""
    from fxparam.checks.transfer import _corpus  # cached: transfer() reads the same corpus

    train = len(_corpus(args.data, args.tokenizer).train)
    if tokens_per_run <= train:
        return ""
    return (
        f"each run reads {tokens_per_run:,} tokens from the {train:,} training tokens of --data "
        f"({tokens_per_run / train:.1f} epochs): the held-out loss then rewards memorising the data too, and "
        "the best LR can move with the epoch count; give more data, or fewer --steps / --batch-size / --seq-len"
    )


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the sweep, print the optimum table, write JSON, CSV and the plot."""
    from fxparam.checks.transfer import transfer

    if args.weight_decay < 0 or not math.isfinite(args.weight_decay):
        raise ConfigError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    kwargs = settings_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / f"{args.vary}.jsonl"
    if args.fresh and results.exists():
        results.unlink()
    jobs = default_jobs(args)
    n = len(kwargs["params"]) * len(kwargs["sizes"]) * len(kwargs["lrs"]) * len(kwargs["seeds"])
    tokens = kwargs["steps"] * kwargs["batch_size"] * kwargs["seq_len"]
    print(
        f"transfer: {n} runs ({', '.join(kwargs['params'])} x {args.vary}s {kwargs['sizes']} x "
        f"{len(kwargs['lrs'])} LRs x {len(kwargs['seeds'])} seed(s)), {tokens:,} tokens each, on {jobs} process(es)",
        file=sys.stderr,
    )
    epochs_note = _epochs_note(args, tokens)
    if epochs_note:
        print(f"warning: {epochs_note}", file=sys.stderr)
    bar = progress_bar(n, "transfer", args.progress)
    start = time.perf_counter()
    try:
        res = transfer(
            **kwargs, results=results, jobs=jobs, threads=args.threads, progress=lambda _p: bar.update(1)
        )
    except FxparamError:
        raise
    except Exception as exc:
        if args.traceback:
            raise
        raise ConfigError(f"training failed: {type(exc).__name__}: {exc} (rerun with --traceback)") from exc
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    trained = len(res.points) - res.resumed
    cpu = res.cpu_seconds
    text = res.summary() + (
        f"\n\n{trained} run(s) trained in {seconds:.0f} s ({cpu:.0f} CPU-s in {jobs} process(es))"
        + (f", {res.resumed} re-used from {results}" if res.resumed else "")
        + "."
    ) + (f"\nNote: {epochs_note}" if epochs_note else "")
    print(text)
    written = [res.save(out / f"{args.vary}.json"), res.to_csv(out / f"{args.vary}.csv")]
    (out / f"{args.vary}_summary.md").write_text(text + "\n", encoding="utf-8")
    written.append(os.fspath(out / f"{args.vary}_summary.md"))
    if args.plot:
        written.append(res.plot(out / f"{args.vary}.png"))
    print(f"wrote {', '.join(map(str, written))} (runs kept in {results})")
    return 0
