"""``fxparam collapse``: compare loss curves on collapse axes; non-zero exit when one drifts."""

from __future__ import annotations

import argparse
from pathlib import Path

from fxparam.errors import RecipeError

# The defaults of fxparam.recipes._collapse, written out so that --help imports no numpy
# (tests/cli/test_cli_collapse.py checks they agree).
ALIGN_WINDOW = (0.25, 0.5)
DEFAULT_SMOOTH = 0.02
DEFAULT_T_MIN = 0.1
DEFAULT_THRESHOLD = 0.01
DEFAULT_FALSE_ALARM = 0.01

#: Exit status when at least one run drifts from the reference (the CI gate).
EXIT_ALARM = 1

_EPILOG = f"""\
input: CSV files with a header that has a step column (step, Step, _step, global_step, ...) and a
loss column (loss, or --column NAME, or the one column whose name contains 'loss': a wandb export
'Step,train/loss,train/loss__MIN,train/loss__MAX' reads train/loss; a TensorBoard export
'Wall time,Step,Value' reads Value); extra columns are ignored. Fields are separated by commas,
tabs or semicolons. --column NAME may be repeated: each run uses the first name its header has.
Each run is put on collapse axes: t_hat = step / total_steps and loss / L(T). A complete run
divides by its final (smoothed) loss; a run whose last step is before its --total-steps is
early-aligned to the reference over t_hat in [{ALIGN_WINDOW[0]}, {ALIGN_WINDOW[1]}], and that divisor is
printed as its final-loss forecast. The reference (--ref, default the first run) must be complete.

horizon: a run still training needs its planned total with --total-steps ('-' states that a run's
last logged step IS its end). A run given without --total-steps is tested both ways against the
reference: read as complete (T = its last logged step; L(T) its final loss, and L(T) fitted) and
read as the first part, t_hat in [0.2, 0.95], of a longer run (L(T) fitted). When every complete
reading drifts (the alarm below) but a partial one collapses, the run looks unfinished and is
refused (exit 2), naming the horizon that fits; a run that collapses as complete is accepted, and
one that fits no horizon is an ALARM. The end slope cannot decide this: a decay-to-zero run falls
fastest at its very end, so a run stopped halfway falls less steeply than a finished one.

noise: each log's own noise is estimated from it (median absolute second difference of log loss);
the alarm fires when |residual| > threshold + z x (the residual's noise), z chosen so that a run
within the threshold raises it with probability --false-alarm at most.

exit status: 0 when every run stays within --threshold of the reference, {EXIT_ALARM} when the alarm fires
for any run (use it to gate CI), 2 on bad input.

examples:
  fxparam collapse run1.csv run2.csv --ref small.csv --out collapse.png
  fxparam collapse big_partial.csv --ref small.csv --total-steps 200000
  fxparam collapse done.csv partial.csv --ref small.csv --total-steps - 200000
  fxparam collapse wandb_export.csv --ref small.csv --column train/loss
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``collapse`` sub-command."""
    p = subparsers.add_parser(
        "collapse",
        help="loss-curve collapse: residuals vs a reference run, alarm, forecast, plot",
        description="Normalise loss logs (CSV with step,loss columns) and check they collapse onto a reference.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # nargs="*": with "+", "--total-steps 4000 run.csv" (flags first) failed as "runs are required",
    # the run swallowed by --total-steps; run() names that instead (review R17b)
    p.add_argument("runs", nargs="*", type=Path, help="CSV loss logs (columns step,loss; extra columns ok)")
    p.add_argument("--ref", type=Path, help="reference run CSV (complete; default: the first run)")
    p.add_argument(
        "--total-steps",
        nargs="+",
        metavar="N",
        help="planned total steps of each run, in order ('-' = its last logged step is its end; default: "
        "the last logged step, refused when the run looks unfinished: see 'horizon' below)",
    )
    p.add_argument(
        "--ref-total-steps", type=float, help="planned total steps of the reference (default: last step)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"alarm when |residual| exceeds this, in units of L(T) (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--t-min",
        type=float,
        default=DEFAULT_T_MIN,
        help=f"ignore t_hat below this (default {DEFAULT_T_MIN})",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=DEFAULT_SMOOTH,
        help=f"moving-average width in t_hat, 0 = none (default {DEFAULT_SMOOTH})",
    )
    p.add_argument(
        "--false-alarm",
        type=float,
        default=DEFAULT_FALSE_ALARM,
        help=f"probability of an alarm on a run within --threshold, given its noise (default {DEFAULT_FALSE_ALARM})",
    )
    p.add_argument(
        "--column",
        action="append",
        metavar="NAME",
        help="name of the loss column (default: loss, or the one column naming 'loss', or a TensorBoard "
        "export's Value); repeat it for logs from different tools: each run uses the first its header has",
    )
    p.add_argument("--step-column", help="name of the step column (default: step, _step, global_step, ...)")
    p.add_argument(
        "--ref-column",
        help="loss column of --ref (default: --column where the reference has it, else as for --column)",
    )
    p.add_argument(
        "--ref-step-column",
        help="step column of --ref (default: --step-column where the reference has it, else as for --step-column)",
    )
    p.add_argument("--out", type=Path, help="write the collapse plot (PNG) here (needs matplotlib)")
    p.set_defaults(func=run)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _totals(values: list[str] | None, n: int) -> list[float | None]:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise RecipeError(
            f"--total-steps got {len(values)} value(s) for {n} run(s); give one per run, in order "
            "('-' for a run's last logged step)"
        )
    out: list[float | None] = []
    for v in values:
        if v == "-":
            out.append(None)
            continue
        try:
            out.append(float(v))
        except ValueError:
            raise RecipeError(f"--total-steps: {v!r} is not a number (or '-')") from None
    return out


def _ref_columns(args: argparse.Namespace, ref_path: Path) -> dict[str, str | None]:
    """Columns of the reference: --ref-column / --ref-step-column; else --column / --step-column
    when the reference's header has them (a wandb export compared with a plain step,loss
    reference: the run's column name was required of the reference too, review R17); else the
    usual detection (which refuses an ambiguous header, naming --ref-column)."""
    import csv

    try:
        with ref_path.open(newline="", encoding="utf-8-sig") as fh:
            header = {h.strip().lower() for h in next(csv.reader(fh), [])}
    except OSError:
        header = set()  # read_loss_csv names the missing file

    def pick(own: str | None, shared: str | list[str] | None) -> str | list[str] | None:
        if own is not None or args.ref is None:
            return own if own is not None else shared
        if isinstance(shared, list):  # --column given once or more: the names the reference has
            present = [c for c in shared if c.strip().lower() in header]
            return present or None
        return shared if shared is not None and shared.strip().lower() in header else None

    return {"column": pick(args.ref_column, args.column), "step_column": pick(args.ref_step_column, args.step_column)}


def _unfinished_message(found: list, threshold: float) -> str:  # list[UnfinishedRun | None]
    """The refusal for runs without --total-steps that look unfinished, with the flag to give."""
    lines = []
    for u in found:
        if u is None:
            continue
        lines.append(
            f"run {u.name!r} looks unfinished: read as complete (T = its last logged step {u.last_step:g}) it "
            f"drifts from the reference by {u.as_complete.max_abs:.3f} x L(T) (at t_hat {u.as_complete.t_at_max:.2f}), "
            f"but read as the first {100 * u.fraction:.0f}% of a run of about {u.total_steps:,.0f} steps it "
            f"collapses within {threshold:g} (max |r| {u.as_partial.max_abs:.4f})"
        )
    # three significant figures, written as an integer step count: 20031 -> 20000
    suggestion = " ".join("-" if u is None else str(int(float(f"{u.total_steps:.3g}"))) for u in found)
    return (
        "; ".join(lines)
        + f". Give each run's planned total steps, in order: --total-steps {suggestion} (the estimate; use the "
        "planned value), or '-' for a run whose last logged step IS its end (it is then judged as complete)"
    )


def run(args: argparse.Namespace) -> int:
    """Normalise, compare, print the residual table, plot; return 1 when the alarm fires."""
    from fxparam.recipes._collapse import (
        NormalisedCurve,
        UnfinishedRun,
        collapse_plot,
        collapse_residual,
        normalise_curve,
        read_loss_csv,
        unfinished_run,
    )

    if not args.runs:
        taken = [v for v in args.total_steps or [] if v != "-" and not _is_number(v)]
        if taken:
            raise RecipeError(
                f"no run CSV: --total-steps took {', '.join(repr(v) for v in taken)} as step count(s); give the runs "
                f"before --total-steps, or last after '--' (everything after it is a run): fxparam collapse --ref REF.csv "
                f"--total-steps N -- {taken[0]}"
            )
        raise RecipeError("give at least one run CSV (columns step,loss): fxparam collapse run.csv --ref ref.csv")
    if not 0 < args.false_alarm < 1:
        raise RecipeError(f"--false-alarm is a probability in (0, 1), got {args.false_alarm}")
    columns = {"column": args.column, "step_column": args.step_column}
    ref_path = args.ref or args.runs[0]
    ref_steps, ref_losses = read_loss_csv(ref_path, **_ref_columns(args, ref_path))
    reference = normalise_curve(
        ref_steps, ref_losses, total_steps=args.ref_total_steps, smooth=args.smooth, name=ref_path.stem
    )
    curves: list[NormalisedCurve] = []
    totals = _totals(args.total_steps, len(args.runs))
    unfinished: list[UnfinishedRun | None] = []
    for path, total in zip(args.runs, totals, strict=True):
        steps, losses = read_loss_csv(path, **columns)
        # no --total-steps at all: the horizon is unstated; test whether the run looks unfinished
        unstated = args.total_steps is None and path.resolve() != ref_path.resolve()
        unfinished.append(
            unfinished_run(steps, losses, reference, threshold=args.threshold, t_min=args.t_min,
                           smooth=args.smooth, false_alarm=args.false_alarm, name=path.stem)
            if unstated
            else None
        )
        partial = total is not None and steps[-1] < total
        curves.append(
            normalise_curve(
                steps,
                losses,
                total_steps=total,
                align="early" if partial else "final",
                reference=reference if partial else None,
                smooth=args.smooth,
                name=path.stem,
            )
        )
    if any(u is not None for u in unfinished):
        raise RecipeError(_unfinished_message(unfinished, args.threshold))
    reports = [
        collapse_residual(c, reference, threshold=args.threshold, t_min=args.t_min, false_alarm=args.false_alarm)
        for c in curves
    ]
    # T taken as the last logged step without being told ('-' states it: not an assumption)
    assumed = [c.name for c, total in zip(curves, totals, strict=True) if total is None and args.total_steps is None]

    checkpoints = (0.25, 0.5, 0.75, 1.0)
    name_w = max(12, *(len(c.name or "") for c in curves))
    header = f"{'run':<{name_w}}{'T':>10}{'L(T)':>11}" + "".join(f"{f'r@{t:g}':>10}" for t in checkpoints)
    header += f"{'max|r|':>10}{'at':>7}{'noise':>9}  status"
    print(f"reference: {reference.name} (L(T) = {reference.divisor:.4f}, T = {reference.total_steps:g})")
    print(header)
    for c, rep in zip(curves, reports, strict=True):
        cells = []
        for t in checkpoints:
            ok = rep.t_hat[0] - 1e-9 <= t <= rep.t_hat[-1] + 1e-9
            cells.append(f"{rep.at(t):>+10.4f}" if ok else f"{'-':>10}")
        div = f"{c.divisor:.4f}" + ("*" if c.align == "early" else " ")
        status = "ALARM" if rep.alarm else "ok"
        print(
            f"{c.name or '':<{name_w}}{c.total_steps:>10g}{div:>11}"
            + "".join(cells)
            + f"{rep.max_abs:>10.4f}{rep.t_at_max:>7.2f}{rep.noise:>9.4f}  {status}"
        )
    if any(c.align == "early" for c in curves):
        print("* L(T) forecast by early alignment to the reference (the run is partial)")
    if assumed:
        print(
            f"T of {', '.join(str(n) for n in assumed)} = its last logged step (no --total-steps; tested against "
            "reading it as the first part of a longer run, see 'horizon' in --help)"
        )
    print(
        f"alarm when |r| > {args.threshold:g} + z x noise (z = {max(r.z for r in reports):.2f}: false-alarm "
        f"probability {args.false_alarm:g} per run; noise = median standard deviation of r from the logs' own noise)"
    )
    if args.out is not None:
        collapse_plot(curves, args.out, reference=reference, threshold=args.threshold, t_min=args.t_min,
                      false_alarm=args.false_alarm)
        print(f"wrote {args.out}")
    fired = [r.name for r in reports if r.alarm]
    if fired:
        print(
            f"ALARM: {', '.join(str(n) for n in fired)} drift(s) from the reference by more than "
            f"{args.threshold:g} x L(T) beyond noise: check numerics, data and that schedule shape, TPP and tau match"
        )
        unsure = [n for n in fired if n in assumed]
        if unsure:
            print(
                f"note: {', '.join(str(n) for n in unsure)} had no --total-steps and was read as complete; reading it "
                "as the first part of a longer run does not explain the drift (see 'horizon' in --help); if it is "
                "still training, give its planned total steps anyway"
            )
        return EXIT_ALARM
    # what "ok" can claim: a drift below threshold + z x noise raises no alarm (review R17b: on a
    # log of 50 points with 3% noise a 17% drift passed as "all runs within 0.01 x L(T)")
    hidden = {str(r.name): r.threshold + r.z * r.noise for r in reports if r.z * r.noise > r.threshold}
    if hidden:
        print(
            "collapse ok, within the logs' noise: a drift smaller than about "
            + ", ".join(f"{v:.3g} x L(T) for {n}" for n, v in hidden.items())
            + f" (--threshold {args.threshold:g} + z x noise) would not raise the alarm; log the loss more often "
            f"or average more steps (--smooth, now {args.smooth:g}) to resolve {args.threshold:g}"
        )
        return 0
    print(f"collapse ok: all runs within {args.threshold:g} x L(T) of the reference")
    return 0
