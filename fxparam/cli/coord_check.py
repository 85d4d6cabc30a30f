"""``fxparam coord-check``: do activations keep their scale as the model widens and deepens?

For each parameterization, train every width (at a fixed depth) and every depth (at a fixed
width) a few Adam steps on one fixed batch of real text, fit log2 activation RMS against
log2 width / depth, and compare the slopes with calibrated bands.  SP is the negative
control: it should fail.  Writes plots (muP-paper style), the raw numbers as JSON and the
summary table to an output folder.  Exit status 1 when a parameterization that should be
invariant (muP, CompleteP) is not — an invariance gate for CI.
"""

from __future__ import annotations

import argparse
import inspect as _inspect
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from fxparam.cli._common import (  # noqa: F401  (int_list ... set_help: re-exported, their old home)
    add_run_options,
    checked,
    data_vocab,
    default_jobs,
    int_list,
    param_list,
    positive_float,
    positive_int,
    progress_bar,
    set_help,
)
from fxparam.cli._gpt_options import add_model_options, gpt_options
from fxparam.errors import ConfigError, FxparamError

#: Defaults of the built-in GPT in this command (as in the calibration of the bands).
GPT_DEFAULTS: dict[str, Any] = {"head_dim": 16, "seq_len": 32}
DEFAULT_WIDTHS = {"gpt": [64, 128, 256, 512, 1024], "hf": [64, 128, 256, 512], "user": [64, 128, 256, 512]}
DEFAULT_DEPTHS = {"gpt": [2, 4, 8, 16], "hf": [2, 4, 8], "user": [2, 4, 8]}
DEFAULT_LR = 3e-3
BATCH_SIZE = 8

_EPILOG = """\
examples:
  fxparam coord-check                                   # built-in GPT, SP vs muP vs CompleteP
  fxparam coord-check --widths 64,128,256 --depths 2,4,8 --seeds 1 --out /tmp/cc
  fxparam coord-check --model mypkg.models:make --param completep     # CI gate on your model
  fxparam coord-check --model hf:llama --param mup --depths none
  fxparam coord-check --model mymodel:make --data corpus.txt --widths 64,128,256 --depths none
  fxparam coord-check --model hf:llama --data corpus.txt --tokenizer ./tok --device cuda --dtype bfloat16

What is judged: the slope of log2(activation RMS) vs log2(width) for every activation site
(embedding output, each residual branch, attention logits, output logits, final residual
stream) at init and after each step, against calibrated bands (fxparam.checks.coord.WIDTH_BANDS);
and vs log2(depth) for the final residual stream after step >= 2 (DEPTH_BANDS).  muP and
CompleteP must be width-invariant, CompleteP also depth-invariant.  SP (and muP over depth)
are negative controls: they must grow, or the check could not detect a broken model.

A model factory named by 'module.path:factory' (or 'file.py:factory'; the current directory is
importable) is called as factory(width=..., depth=...) plus any model option given (--vocab,
--heads, ...) and must map token ids [batch, seq] to logits [batch, seq, vocab].
Your data: --data PATH (text, .npy/.bin token ids, a datasets folder), --tokenizer PATH for
text when the model is not byte-level; --device cuda --dtype bfloat16 to train on an accelerator.

Exit status: 0 all invariant where expected; 1 some parameterization that should be
invariant is not; 2 bad options or a model that could not be built or trained.
"""


# ---------------------------------------------------------------------- option parsing


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``coord-check`` sub-command."""
    p = sub.add_parser(
        "coord-check",
        help="coordinate check: do activations keep their scale as width and depth grow? (SP vs muP vs CompleteP)",
        description="Train a model a few Adam steps at several widths and depths under each\n"
        "parameterization, fit how activation RMS grows with width and depth, and judge the\n"
        "slopes against calibrated bands.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p, sweep=True)
    set_help(p, "--head-dim", "GPT fixed head dim (default 16 here; heads grow with width)")
    set_help(p, "--seq-len", "GPT sequence length and length of the fixed batch (default 32 here)")
    p.add_argument(
        "--param",
        type=param_list,
        default=["sp", "mup", "completep"],
        metavar="NAMES",
        help="comma-separated parameterizations (default sp,mup,completep; sp is the negative control)",
    )
    p.add_argument(
        "--widths",
        type=int_list,
        default=None,
        metavar="W1,W2,...",
        help="widths to sweep (default 64,128,256,512,1024 for the built-in GPT)",
    )
    p.add_argument(
        "--depths",
        type=int_list,
        default=None,
        metavar="D1,D2,...|none",
        help="depths to sweep (default 2,4,8,16 for the built-in GPT; 'none': no depth sweep, "
        "the model's own depth)",
    )
    p.add_argument(
        "--depth-width",
        type=positive_int,
        default=None,
        metavar="W",
        help="width of the depth sweep (default: the second smallest width; at the base width "
        "muP and SP coincide)",
    )
    p.add_argument(
        "--base-width", type=positive_int, default=None, help="muP base width (default: smallest width)"
    )
    p.add_argument(
        "--base-depth", type=positive_int, default=None, help="CompleteP base depth (default: smallest depth)"
    )
    p.add_argument("--steps", type=int, default=3, help="Adam steps on the fixed batch (default 3)")
    p.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="adam",
        help="optimizer of the steps (default adam; muon: Muon on hidden matrices + AdamW, docs/muon.md)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        help="seeds averaged per point (default 3, as the bands were calibrated; fewer widen the bands "
        "by this run's own seed noise, see the note in the summary)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=DEFAULT_LR,
        help=f"base learning rate (default {DEFAULT_LR:g}: high enough to expose SP's growth, "
        "below the reference GPT's unstable range)",
    )
    p.add_argument(
        "--out",
        default="fxparam-coord-check",
        metavar="DIR",
        help="output folder for plots, JSON and the summary (default ./fxparam-coord-check)",
    )
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    add_run_options(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------- model kinds


def model_kind(spec: str) -> str:
    """``"gpt"``, ``"hf"`` or ``"user"``."""
    return "gpt" if spec == "gpt" else "hf" if spec.startswith("hf:") else "user"


def factory_takes_depth(spec: str) -> bool:
    """Whether the model named by ``spec`` can be built at several depths."""
    if model_kind(spec) != "user":
        return True
    from fxparam.checks.targets import user_factory_callable

    params = _inspect.signature(user_factory_callable(spec)).parameters  # import errors: ConfigError
    return "depth" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


#: ``--optimizer`` choices: names of torch.optim classes (fxparam.optimizer applies each one's rules).
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "muon": "Muon"}


def optimizer_class(name: str) -> type:
    """The torch optimizer class for an ``--optimizer`` name."""
    import torch

    cls = getattr(torch.optim, OPTIMIZERS[name], None)
    if cls is None:
        raise ConfigError(f"--optimizer {name}: torch.optim.{OPTIMIZERS[name]} is not in this torch ({torch.__version__})")
    return cls


def base_kwargs(param: str, base_width: int, base_depth: int) -> dict[str, int]:
    """Config fields a named parameterization needs: ``base_width`` / ``base_depth`` (read from the configs)."""
    from fxparam.configs import base_kwargs as needed

    return needed(param, base_width=base_width, base_depth=base_depth)


def expects(param: str) -> dict[str, bool]:
    """Which sweeps a parameterization should be invariant under (read from the configs)."""
    from fxparam.configs import invariant_axes

    return invariant_axes(param)


def label(param: str) -> str:
    from fxparam.checks.transfer import param_label

    text = param_label(param)
    return text + (" (control)" if not any(expects(param).values()) else "")


# ---------------------------------------------------------------------- work


def _coord_task(task: dict[str, Any]) -> list[Any]:
    """One (parameterization, width, depth) point, all seeds: runs in a worker process."""
    import torch

    from fxparam.checks.coord import coord_check
    from fxparam.checks.targets import resolve

    make = checked(resolve(task["model"], **task["options"]), task["model"])
    cc = coord_check(
        make,
        widths=[task["width"]],
        depths=None if task["depth"] is None else [task["depth"]],
        config=task["param"],
        steps=task["steps"],
        lr=task["lr"],
        seeds=task["seeds"],
        optimizer=optimizer_class(task.get("optimizer", "adam")),
        data=task["data"],
        device=task["device"],
        dtype=getattr(torch, task["dtype"]),
        **task["kwargs"],
    )
    return cc.records


def run(args: argparse.Namespace) -> int:
    """Run the coordinate checks, print the summary, write the outputs; exit status."""
    from fxparam.checks.coord import CONTROL_THRESHOLD, DEPTH_BANDS, WIDTH_BANDS, Axis, CoordCheck, Record
    from fxparam.checks.data import TokenCorpus, load_tokens
    from fxparam.checks.transfer import check_device, parallel_map

    start = time.perf_counter()
    check_device(args.device, args.dtype)
    kind = model_kind(args.model)
    # model options reach every kind of model (or are refused by it): never dropped
    options = {**GPT_DEFAULTS, **gpt_options(args)} if kind == "gpt" else gpt_options(args)
    seq_len = options.get("seq_len", args.seq_len or 32)
    if kind == "user":
        options.pop("seq_len", None)  # the batch length; a factory's own positions are its business
    tokens = load_tokens(args.data, tokenizer=args.tokenizer)
    vocab = data_vocab(args, tokens)
    if vocab is not None and "vocab" not in options and kind != "user":
        options["vocab"] = vocab  # token ids beyond bytes: the built-in GPT / hf model is built to cover them
    make = checked(_resolve(args.model, options), args.model)  # bad names fail here, before any training
    widths = args.widths if args.widths is not None else DEFAULT_WIDTHS[kind]
    if not widths:
        raise ConfigError("--widths: give at least one width")
    if args.depths is not None:
        depths = args.depths
    else:
        depths = DEFAULT_DEPTHS[kind] if factory_takes_depth(args.model) else []
    if args.steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {args.steps}")
    depth_sweep = len(depths) >= 2
    if depth_sweep and args.steps < 2:
        raise ConfigError(
            "the depth check judges steps >= 2: use --steps 2 or more, or --depths none to skip it"
        )
    if len(widths) < 2 and not depth_sweep:
        raise ConfigError("nothing to compare: give at least two --widths or two --depths")
    base_width = args.base_width or widths[0]
    d0 = depths[0] if depths else None
    base_depth = args.base_depth or d0
    data = TokenCorpus(tokens).batch(BATCH_SIZE, seq_len, seed=1234 + args.seed)
    if base_depth is None and any(expects(p)["depth"] for p in args.param):
        from fxparam.checks.coord import _inspect

        # the check's own batch as example inputs when the model cannot describe its own (a user
        # factory with no example_inputs(): plain fxparam.inspect refused it, review R17)
        base_depth = _inspect(make(width=widths[0]), data).depth
    depth_width = args.depth_width or (widths[1] if len(widths) > 1 else widths[0])
    seeds = list(range(args.seed, args.seed + args.seeds))
    from fxparam.configs import resolve_config

    for p in args.param:  # bad config fields fail before any training
        resolve_config(p, **base_kwargs(p, base_width, base_depth or 1))

    # width sweep at the base depth (CompleteP one depth deeper, so it is not a copy of muP);
    # depth sweep at depth_width.  Shared points are trained once.
    width_depth = {p: (depths[1] if expects(p)["depth"] and len(depths) > 1 else d0) for p in args.param}
    points: set[tuple[str, int, int | None]] = set()
    for p in args.param:
        if len(widths) >= 2:
            points |= {(p, w, width_depth[p]) for w in widths}
        if depth_sweep:
            points |= {(p, depth_width, d) for d in depths}
    tasks = [
        {
            "model": args.model,
            "options": options,
            "param": p,
            "width": w,
            "depth": d,
            "steps": args.steps,
            "lr": args.lr,
            "optimizer": args.optimizer,
            "seeds": seeds,
            "data": data,
            "device": args.device,
            "dtype": args.dtype,
            "kwargs": base_kwargs(p, base_width, base_depth or 1),
        }
        for p, w, d in sorted(points, key=lambda t: -(t[1] ** 2) * (t[2] or 2))
    ]
    records: dict[str, list[Record]] = {p: [] for p in args.param}
    jobs = default_jobs(args)
    print(
        f"coord-check: {args.model}, {len(args.param)} parameterization(s) x {len(tasks) // len(args.param)} "
        f"model sizes x {len(seeds)} seed(s), {args.steps} Adam steps (lr {args.lr:g}) on {jobs} process(es)",
        file=sys.stderr,
    )
    bar = progress_bar(len(tasks), "coord-check", args.progress)

    def collect(task: dict[str, Any], result: list[Record]) -> None:
        records[task["param"]].extend(result)
        bar.update(1)

    try:
        parallel_map(_coord_task, tasks, jobs=jobs, threads=args.threads, on_result=collect)
    except FxparamError:
        raise
    except Exception as exc:
        if args.traceback:
            raise
        raise ConfigError(
            f"training {args.model} failed: {type(exc).__name__}: {exc} (rerun with --traceback)"
        ) from exc
    finally:
        bar.close()
    seconds = time.perf_counter() - start

    checks: dict[str, dict[Axis, CoordCheck]] = {}
    for p in args.param:
        checks[p] = {}
        if len(widths) >= 2:
            checks[p]["width"] = CoordCheck(
                config=p,
                widths=widths,
                depths=[d for d in [width_depth[p]] if d is not None],
                steps=args.steps,
                lr=args.lr,
                records=[r for r in records[p] if width_depth[p] is None or r.depth == width_depth[p]],
            )
        if depth_sweep:
            checks[p]["depth"] = CoordCheck(
                config=p,
                widths=[depth_width],
                depths=depths,
                steps=args.steps,
                lr=args.lr,
                records=[r for r in records[p] if r.width == depth_width],
            )
    report = judge(checks, width_bands=WIDTH_BANDS, depth_bands=DEPTH_BANDS, threshold=CONTROL_THRESHOLD)
    setting = (
        f"{args.model}: widths {_span(widths)} at depth {d0 if d0 is not None else '(model default)'}"
        + (f" (CompleteP at depth {depths[1]})" if any(width_depth[p] != d0 for p in args.param) else "")
        + (f"; depths {_span(depths)} at width {depth_width}" if depth_sweep else "")
        + f"; base width {base_width}"
        + (f", base depth {base_depth}" if base_depth else "")
        + f"; {args.steps} Adam steps, lr {args.lr:g}, {len(seeds)} seed(s), batch {BATCH_SIZE}x{seq_len} {_unit(args)}"
    )
    text = "\n".join(
        [
            f"Coordinate check — {setting}",
            "",
            report["text"],
            "",
            f"{'PASS' if report['ok'] else 'FAIL'}: {report['headline']}  ({seconds:.0f} s)",
        ]
    )
    print(text)
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    (out / "summary.txt").write_text(text + "\n", encoding="utf-8")
    written.append(out / "summary.txt")
    payload = {
        "settings": {
            "model": args.model,
            "options": options,
            "params": args.param,
            "widths": widths,
            "depths": depths,
            "width_sweep_depth": width_depth,
            "depth_width": depth_width,
            "base_width": base_width,
            "base_depth": base_depth,
            "steps": args.steps,
            "lr": args.lr,
            "optimizer": args.optimizer,
            "seeds": seeds,
            "batch": [BATCH_SIZE, seq_len],
            "data": args.data,
            "tokenizer": args.tokenizer,
            "device": args.device,
            "dtype": args.dtype,
            "jobs": jobs,
            "threads": args.threads,
        },
        "seconds": round(seconds, 2),
        "ok": report["ok"],
        "verdicts": report["verdicts"],
        "warnings": report["warnings"],
        "slopes": {
            p: {axis: [s.model_dump() for s in cc.slopes(axis)] for axis, cc in by.items()}
            for p, by in checks.items()
        },
        "records": {p: {axis: _compact(cc.records) for axis, cc in by.items()} for p, by in checks.items()},
    }
    (out / "coord_check.json").write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
    written.append(out / "coord_check.json")
    written += write_csv(checks, out)
    if args.plots:
        from fxparam.checks.coord_plot import plot_coord_checks

        for axis in ("width", "depth"):
            ccs = [(p, by[axis]) for p, by in checks.items() if axis in by]
            if ccs:
                path = out / f"{axis}.png"
                plot_coord_checks(
                    [c for _, c in ccs],
                    path,
                    axis=axis,
                    titles=[label(p) for p, _ in ccs],
                    kinds=["residual"] if axis == "depth" else None,
                )
                written.append(path)
    print(f"wrote {', '.join(os.fspath(p) for p in written)}")
    return 0 if report["ok"] else 1


RECORD_COLUMNS = ["width", "depth", "seed", "step", "key", "kind", "rms", "delta"]


def write_csv(checks: dict[str, dict[Any, Any]], out: Path) -> list[Path]:
    """``records.csv`` (one row per activation record) and ``slopes.csv`` (one per fitted slope)."""
    import csv

    paths = [out / "records.csv", out / "slopes.csv"]
    with paths[0].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["param", "sweep", *RECORD_COLUMNS])
        for p, by in checks.items():
            for axis, cc in by.items():
                for r in cc.records:
                    w.writerow([p, axis, r.width, r.depth, r.seed, r.step, r.key, r.kind, f"{r.rms:.6g}", f"{r.delta:.6g}"])
    with paths[1].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["param", "sweep", "kind", "key", "step", "stat", "slope"])
        for p, by in checks.items():
            for axis, cc in by.items():
                for s in cc.slopes(axis):
                    w.writerow([p, axis, s.kind, s.key, s.step, s.stat, f"{s.slope:.6g}"])
    return paths


def _compact(records: list[Any]) -> dict[str, Any]:
    """Raw records as a table (5 significant digits): a third of the size of one object per record."""
    rows = [
        [r.width, r.depth, r.seed, r.step, r.key, r.kind, float(f"{r.rms:.5g}"), float(f"{r.delta:.5g}")]
        for r in records
    ]
    return {"columns": RECORD_COLUMNS, "rows": rows}


def _resolve(spec: str, options: dict[str, Any]) -> Any:
    from fxparam.checks.targets import resolve

    return resolve(spec, **options)


def _unit(args: argparse.Namespace) -> str:
    """What the batch counts: bytes of text (no --tokenizer, no token file), else tokens (review R17b: a
    tokenizer or token file with fewer than 257 ids was called bytes)."""
    data = Path(args.data) if args.data is not None else None
    as_bytes = args.tokenizer is None and (data is None or (data.suffix not in (".npy", ".bin") and not data.is_dir()))
    return "bytes" if as_bytes else "tokens"


def _span(values: list[int]) -> str:
    return ",".join(map(str, values)) if len(values) <= 2 else f"{values[0]}..{values[-1]}"


# ---------------------------------------------------------------------- judging


def judge(
    checks: dict[str, dict[Any, Any]],
    *,
    width_bands: dict[str, Any],
    depth_bands: dict[str, Any],
    threshold: float,
) -> dict[str, Any]:
    """Table, per-parameterization verdicts, warnings and the overall result of a run.

    A parameterization expected to be invariant passes when every slope is in its band;
    one expected to grow (a control) is confirmed when some slope after step 1 (over
    width) or the final residual stream after step 2 (over depth) exceeds ``threshold``.
    """
    from fxparam.analysis.report import _table
    from fxparam.checks.coord import CALIBRATION_SEEDS

    rows: list[list[str]] = []
    verdicts: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    lines_v: list[str] = []
    notes: list[str] = []
    failed: list[str] = []
    for param, by in checks.items():
        verdicts[param] = {}
        exp = expects(param)
        for axis, cc in by.items():
            bands = width_bands if axis == "width" else depth_bands
            min_step = 0 if axis == "width" else 2
            verdict = cc.verdict(axis, bands=bands, min_step=min_step)
            slopes = [s for s in cc.slopes(axis) if s.step >= min_step and s.kind in bands]
            if axis == "width":
                growth = cc.max_growth("width", min_step=1)
            else:
                growth = max((s.slope for s in slopes if s.kind == "residual"), default=float("nan"))
            sizes = cc.widths if axis == "width" else cc.depths
            fixed = (
                (f"depth {cc.depths[0]}" if cc.depths else "own depth")
                if axis == "width"
                else f"width {cc.widths[0]}"
            )
            sweep = f"{axis} {_span(sizes)} ({fixed})"
            for kind in [k for k in bands if any(s.kind == k for s in slopes)]:
                ks = [s for s in slopes if s.kind == kind]
                init = [s.slope for s in ks if s.step == 0]
                trained = [s.slope for s in ks if s.step > 0]
                b = verdict.bands.get(kind, bands[kind])  # widened when fewer seeds than the calibration
                ok = all(_inside(s.slope, b.init if s.step == 0 else b.trained) for s in ks)
                result = "pass" if ok else ("FAIL" if exp[axis] else "FAIL (expected)")
                rows.append(
                    [
                        label(param),
                        sweep,
                        kind,
                        _rng(init),
                        _rng(trained),
                        f"{_band(b.init)} | {_band(b.trained)}" if axis == "width" else _band(b.trained),
                        result,
                    ]
                )
                sweep = ""
            unconfirmed = False  # a failure seed noise alone may explain (1 seed at 2 sizes)
            if exp[axis]:
                status = "invariant" if verdict.invariant else "NOT invariant"
                if not verdict.invariant:
                    worst = max(verdict.failures, key=lambda s: abs(s.slope))
                    status += f" (worst: {worst.key} after step {worst.step}, slope {worst.slope:+.2f})"
                    # review R17b: 1 seed at 2 sizes cannot estimate its seed noise, so the bands stay the
                    # 3-seed calibration's; a correct model failed there (own factory, widths 32,64:
                    # logits -0.60 vs [-0.60, +0.25]; with 3 seeds -0.46 .. -0.23, pass). Say so.
                    n_seeds = len(cc.seeds())
                    unwidened = sorted({f.kind for f in verdict.failures} - set(verdict.allowance))
                    unconfirmed = n_seeds < CALIBRATION_SEEDS and bool(unwidened)
                    if unconfirmed:
                        status += (
                            f"; UNCONFIRMED: {n_seeds} seed(s) at {len(sizes)} {axis}s cannot estimate the seed "
                            f"noise of {', '.join(unwidened)}, so noise alone can fail a correct model here: rerun "
                            f"with --seeds {CALIBRATION_SEEDS} (the bands' calibration) or a third {axis}"
                        )
                        failed.append(f"{label(param)} over {axis} (unconfirmed at {n_seeds} seed(s), see above)")
                    else:
                        failed.append(f"{label(param)} over {axis}")
            else:
                grows = math.isfinite(growth) and growth > threshold
                what = "not invariant" if axis == "width" else "grows with depth"
                status = (
                    f"{what}, as expected (max slope {growth:+.2f} > {threshold:.2f})"
                    if grows
                    else f"UNDETECTED: max slope {growth:+.2f} <= {threshold:.2f}"
                )
                if not grows:
                    warnings.append(
                        f"the control {label(param)} did not grow with {axis} (max slope {growth:+.2f}): "
                        "this check could not detect a broken parameterization; raise --lr or --steps"
                    )
            if verdict.note and exp[axis]:
                notes.append(f"{label(param)} over {axis}: {verdict.note}")
            verdicts[param][axis] = {
                "expected_invariant": exp[axis],
                "invariant": verdict.invariant,
                "band_allowance": verdict.allowance,
                "noise_note": verdict.note,
                "unconfirmed": unconfirmed,
                "max_growth": growth,
                "status": status,
                "failures": [s.model_dump() for s in verdict.failures],
            }
            lines_v.append(f"{label(param):<22} {axis:<6} {status}")
    header = [
        "parameterization",
        "sweep",
        "activation",
        "slope at init",
        "slope after steps",
        "band (init | trained)",
        "result",
    ]
    text = "\n".join(
        [
            "Slopes of log2 RMS vs log2 width / depth, range over activation sites "
            "(flat = 0; depth: final residual stream after step >= 2):",
            "",
            *(line.rstrip() for line in _table(rows, header)),
            "",
            *lines_v,
            *([""] + [f"note: {n}" for n in notes] if notes else []),
        ]
    )
    ok = not failed
    judged = [label(p) for p, by in checks.items() if any(expects(p)[a] for a in by)]
    if failed:
        headline = "not invariant: " + "; ".join(failed)
    elif judged:
        headline = f"{', '.join(judged)} invariant where expected"
    else:
        headline = "no parameterization expected to be invariant was checked (controls only)"
    return {"text": text, "ok": ok, "headline": headline, "verdicts": verdicts, "warnings": warnings}


def _inside(x: float, band: tuple[float, float]) -> bool:
    return band[0] <= x <= band[1]


def _rng(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:+.2f}" if f"{lo:+.2f}" == f"{hi:+.2f}" else f"{lo:+.2f} .. {hi:+.2f}"


def _band(b: tuple[float, float]) -> str:
    if not math.isfinite(b[0]) and not math.isfinite(b[1]):
        return "any"
    return f"[{b[0]:+.2f}, {b[1]:+.2f}]"
