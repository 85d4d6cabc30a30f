"""Hyperparameter transfer: does the best learning rate stay put as the model grows?

The classic muP demonstration (Tensor Programs V, Figure 1): train the same model at
several widths (or depths) over a grid of learning rates, for a fixed token budget, on
real text, and compare held-out loss vs LR.  Under the standard parameterization (SP) the
optimal LR moves as the model widens; under muP (width) and CompleteP (depth) it should
stay within one grid step of the small model's.

Each run is AdamW built by :func:`fxparam.optimizer` (the plan's per-group LRs), warmup
then linear decay to zero (:func:`fxparam.recipes.schedules.d2z`), on byte tokens of Python's own
documentation (:class:`fxparam.checks.data.ByteCorpus`, no download), evaluated on the held-out
tail.  Every finished run is appended to a JSON-lines results file, so an interrupted or
extended sweep re-uses what is done.

Example:
    >>> res = fxparam.checks.transfer.transfer(sizes=[64, 128], params=["sp", "mup"],
    ...                                 lrs=[2**-9, 2**-7, 2**-5], steps=50)
    >>> print(res.summary())
    >>> res.plot("transfer.png")
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fxparam.errors import CaptureError, ConfigError

Vary = Literal["width", "depth"]

#: Parameterizations compared when not given: over width SP vs muP vs CompleteP (at the base
#: depth CompleteP equals muP, so it is left out of the width sweep); over depth muP vs CompleteP.
DEFAULT_PARAMS: dict[str, tuple[str, ...]] = {"width": ("sp", "mup"), "depth": ("mup", "completep")}

#: Options of the built-in GPT used by ``fxparam transfer`` (heads grow with width at a
#: fixed head dim of 16, so width 64 has 4 heads).
GPT_OPTIONS: dict[str, Any] = {"head_dim": 16}

_PARAM_LABELS = {"sp": "SP", "mup": "μP", "completep": "CompleteP"}


def param_label(name: str) -> str:
    """Display name of a parameterization: ``"mup"`` -> ``"μP"``."""
    return "+".join(_PARAM_LABELS.get(n, n) for n in name.split("+"))


def lr_grid(lo: int, hi: int) -> list[float]:
    """Powers of two ``2**lo .. 2**hi`` (inclusive).

    Example:
        >>> lr_grid(-3, -1)
        [0.125, 0.25, 0.5]
    """
    if lo > hi:
        raise ConfigError(f"lr_grid: empty range 2^{lo} .. 2^{hi}")
    return [2.0**k for k in range(lo, hi + 1)]


class TransferSettings(BaseModel):
    """Everything that determines one sweep's numbers (saved with the results).

    Attributes:
        model: ``"gpt"``, ``"hf:<arch>"`` or ``"module.path:factory"``.
        model_options: built-in GPT options (ignored for other models).
        vary: ``"width"`` or ``"depth"``.
        sizes: the widths (or depths) trained.
        fixed: the depth (when varying width) or width (when varying depth).
        params: parameterizations compared.
        lrs: base learning rates (the LR of the base-size model).
        base_width / base_depth: the size the base LR refers to.
        steps: optimizer updates per run; tokens per run = steps * batch_size * seq_len.
        batch_size / seq_len: sequences per update and their length in bytes.
        warmup_steps: linear warmup before the linear decay to zero.
        weight_decay: AdamW (coupled) weight decay, scaled per group by the plan.
        betas: AdamW betas.
        seeds: model-init and data-order seeds; each point is averaged over them.
        eval_batches: held-out batches (of ``batch_size``) for the final evaluation.
        data: data path trained on (None: Python documentation topics, or in-memory batches).
        data_digest: SHA-256 prefix of the token ids (so resumed results match the data).
        tokenizer: local tokenizer for a text ``data`` (None: bytes).
        output_multiplier: muP / CompleteP ``alpha_out`` (a base hyperparameter: the readout
            output is scaled by ``alpha_out / m_d``); SP runs are unaffected.
        device: torch device the runs train on.
        dtype: parameter dtype (``float32``, ``bfloat16``, ``float16``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    model: str = "gpt"
    model_options: dict[str, Any] = Field(default_factory=lambda: dict(GPT_OPTIONS))
    vary: Vary = "width"
    sizes: list[int]
    fixed: int
    params: list[str]
    lrs: list[float]
    base_width: int
    base_depth: int
    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    seeds: list[int]
    eval_batches: int = Field(gt=0)
    data: str | None = None
    data_digest: str = ""
    tokenizer: str | None = None
    output_multiplier: float = Field(1.0, gt=0)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @property
    def tokens(self) -> int:
        """Training tokens per run."""
        return self.steps * self.batch_size * self.seq_len

    def run_key(self) -> str:
        """Digest of what a single run's result depends on, apart from (param, size, lr, seed)."""
        fields = self.model_dump(exclude={"sizes", "params", "lrs", "seeds", "data"})
        for key, default in (("tokenizer", None), ("output_multiplier", 1.0), ("device", "cpu"), ("dtype", "float32")):
            if fields[key] == default:  # keys of runs recorded before these fields existed stay valid
                del fields[key]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def width_depth(self, size: int) -> tuple[int, int]:
        return (size, self.fixed) if self.vary == "width" else (self.fixed, size)


class TransferPoint(BaseModel):
    """One training run: a parameterization, a size, a base LR and a seed."""

    model_config = ConfigDict(frozen=True)

    key: str
    param: str
    size: int
    width: int
    depth: int
    lr: float
    seed: int
    train_loss: float  # mean over the last 10% of updates
    eval_loss: float  # held-out; nan when the run diverged
    diverged: bool
    seconds: float  # wall time of the run
    cpu_seconds: float = 0.0  # CPU time of the process that trained it (all its threads)


class Optimum(BaseModel):
    """Best base LR of one (parameterization, size) curve."""

    model_config = ConfigDict(frozen=True)

    param: str
    size: int
    lr: float  # grid argmin of the seed-averaged held-out loss
    loss: float
    fitted_log2_lr: float | None  # vertex of a parabola through the argmin and its neighbours
    at_edge: bool  # the argmin is the smallest or largest LR of the grid


#: Parameterizations whose promise includes "wider is better" at the transferred optimum.
WIDER_IS_BETTER = ("mup", "completep")
#: Probability that seed noise alone flags a correct sweep (over all comparisons of a parameterization).
WIDER_FALSE_ALARM = 0.05


class WiderCheck(BaseModel):
    """Does the best held-out loss fall (or stay) as the model grows?

    Attributes:
        param: the parameterization.
        sizes: sizes compared, smallest first.
        losses: seed-mean held-out loss at each size's best LR.
        rises: ``losses[i + 1] - losses[i]`` (negative: the larger model is better).
        tolerance: the rise seed noise explains at each comparison (0 with one seed).
        ok: no rise beyond its tolerance.
        expected: whether the parameterization promises it (muP, CompleteP); SP is reported
            for comparison only.
        note: how noise was accounted for.
    """

    model_config = ConfigDict(frozen=True)

    param: str
    sizes: list[int]
    losses: list[float]
    rises: list[float]
    tolerance: list[float]
    ok: bool
    expected: bool
    note: str = ""


class TransferResult(BaseModel):
    """Settings and finished runs of a transfer sweep, with optima, tables and plots."""

    settings: TransferSettings
    points: list[TransferPoint]
    seconds: float = 0.0  # wall time of the call that produced this result (0 if all resumed)
    cpu_seconds: float = 0.0  # CPU time of the runs trained by that call, all processes together
    resumed: int = 0  # runs re-used from the results file

    # ------------------------------------------------------------------ statistics

    def curves(self) -> dict[str, dict[int, list[tuple[float, float]]]]:
        """param -> size -> sorted [(lr, seed-mean held-out loss)]; diverged runs count as nan."""
        acc: dict[tuple[str, int, float], list[float]] = defaultdict(list)
        for p in self.points:
            acc[(p.param, p.size, p.lr)].append(p.eval_loss)
        out: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
        for (param, size, lr), losses in acc.items():
            out[param][size].append((lr, sum(losses) / len(losses)))
        for by_size in out.values():
            for pts in by_size.values():
                pts.sort()
        return {k: dict(v) for k, v in out.items()}

    def optima(self) -> list[Optimum]:
        """The best LR per (parameterization, size), in the order of the settings."""
        curves = self.curves()
        out = []
        for param in self.settings.params:
            for size in self.settings.sizes:
                pts = [(lr, loss) for lr, loss in curves.get(param, {}).get(size, []) if math.isfinite(loss)]
                if not pts:
                    continue
                i = min(range(len(pts)), key=lambda j: pts[j][1])
                fitted = None
                if 0 < i < len(pts) - 1:
                    fitted = _parabola_vertex([(math.log2(lr), loss) for lr, loss in pts[i - 1 : i + 2]])
                out.append(
                    Optimum(
                        param=param,
                        size=size,
                        lr=pts[i][0],
                        loss=pts[i][1],
                        fitted_log2_lr=fitted,
                        at_edge=pts[i][0] in (min(self.settings.lrs), max(self.settings.lrs)),
                    )
                )
        return out

    def shift(self, param: str) -> float | None:
        """How far the best LR moves from the smallest to the largest size, in grid steps (log2)."""
        opts = {o.size: o for o in self.optima() if o.param == param}
        if len(opts) < 2:
            return None
        lo, hi = opts[min(opts)], opts[max(opts)]
        return (math.log2(hi.lr) - math.log2(lo.lr)) / self._grid_step()

    def regret(self, param: str) -> dict[int, float]:
        """Loss lost at each size by using the smallest size's best LR instead of its own.

        This is what transfer is for: tune on the small model, train the big one at that LR.
        ``inf`` when that LR diverged at a size; sizes without a finite optimum are left out.

        Example:
            >>> res.regret("mup")  # doctest: +SKIP
            {32: 0.0, 64: 0.011, 128: 0.0, 256: 0.0}
        """
        curves = self.curves().get(param, {})
        opts = {o.size: o for o in self.optima() if o.param == param}
        if not opts:
            return {}
        base_lr = opts[min(opts)].lr
        out = {}
        for size, o in sorted(opts.items()):
            at_base = dict(curves.get(size, [])).get(base_lr, float("nan"))
            out[size] = at_base - o.loss if math.isfinite(at_base) else float("inf")
        return out

    def spread(self, param: str) -> float | None:
        """Range (max - min) of the best LR across all sizes, in grid steps."""
        opts = [o for o in self.optima() if o.param == param]
        if len(opts) < 2:
            return None
        logs = [math.log2(o.lr) for o in opts]
        return (max(logs) - min(logs)) / self._grid_step()

    def wider_is_better(self, *, false_alarm: float = WIDER_FALSE_ALARM) -> dict[str, WiderCheck]:
        """Check muP's promise that, at each size's best LR, a larger model is no worse.

        Over width muP and CompleteP promise it; over depth CompleteP (and depth-scaled
        residuals) does, muP does not (it is the depth control).

        For each parameterization, compare the seed-mean held-out loss at the best LR of each
        size with the next larger size. With two or more seeds a rise is flagged only beyond
        ``z * sqrt(se_i^2 + se_j^2)`` (``se``: standard error of each seed mean; ``z`` the
        one-sided normal quantile at ``false_alarm`` / number of comparisons, Bonferroni). With
        one seed the noise is unknown and every rise is flagged, with a note to rerun with seeds.

        Returns:
            ``param -> WiderCheck``; ``expected`` is True for muP and CompleteP (SP is the comparison).
        """
        from statistics import NormalDist, stdev

        by_run: dict[tuple[str, int, float], list[float]] = defaultdict(list)
        for p in self.points:
            by_run[(p.param, p.size, p.lr)].append(p.eval_loss)
        opts = {(o.param, o.size): o for o in self.optima()}
        n_seeds = len(self.settings.seeds)
        out = {}
        for param in self.settings.params:
            sizes = [s for s in self.settings.sizes if (param, s) in opts]
            if len(sizes) < 2:
                continue
            losses = [opts[(param, s)].loss for s in sizes]
            se = []
            for s in sizes:
                vals = [v for v in by_run[(param, s, opts[(param, s)].lr)] if math.isfinite(v)]
                se.append(stdev(vals) / math.sqrt(len(vals)) if len(vals) >= 2 else 0.0)
            rises = [b - a for a, b in zip(losses, losses[1:], strict=False)]
            z = NormalDist().inv_cdf(1 - false_alarm / len(rises))
            tol = [z * math.sqrt(a * a + b * b) for a, b in zip(se, se[1:], strict=False)]
            note = (
                f"{n_seeds} seeds: a rise counts beyond {z:.2f} standard errors"
                if n_seeds >= 2
                else "1 seed: seed noise unknown, so every rise is flagged; rerun with --seeds 3 before concluding"
            )
            names = [n.strip().lower() for n in param.split("+")]
            promised = WIDER_IS_BETTER if self.settings.vary == "width" else ("completep", "depthscaled")
            out[param] = WiderCheck(
                param=param,
                sizes=sizes,
                losses=losses,
                rises=rises,
                tolerance=tol,
                ok=all(r <= t for r, t in zip(rises, tol, strict=True)),
                expected=any(n in promised for n in names),
                note=note,
            )
        return out

    def _grid_step(self) -> float:
        logs = sorted(math.log2(lr) for lr in self.settings.lrs)
        steps = [b - a for a, b in zip(logs, logs[1:], strict=False) if b > a]
        return min(steps) if steps else 1.0

    # ------------------------------------------------------------------ reports

    def table(self) -> str:
        """Best LR per size and parameterization, and its shift across sizes (markdown)."""
        s = self.settings
        opts = {(o.param, o.size): o for o in self.optima()}
        head = [f"{s.vary} {size}" for size in s.sizes]
        lines = [
            "| parameterization | "
            + " | ".join(head)
            + f" | shift (grid steps) | spread | loss lost at {s.vary} {s.sizes[-1]} using the best LR of {s.sizes[0]} |",
            "|---|" + "---|" * len(head) + "---|---|---|",
        ]
        for param in s.params:
            cells = []
            for size in s.sizes:
                o = opts.get((param, size))
                if o is None:
                    cells.append("–")
                    continue
                edge = " (edge)" if o.at_edge else ""
                cells.append(f"2^{math.log2(o.lr):.0f}{edge} ({o.loss:.3f})")
            sh, sp = self.shift(param), self.spread(param)
            lost = self.regret(param).get(s.sizes[-1])
            lines.append(
                f"| {param_label(param)} | "
                + " | ".join(cells)
                + f" | {_fmt_steps(sh)} | {_fmt_steps(sp, signed=False)} | {_fmt_loss(lost)} |"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """The optimum table plus one plain sentence per parameterization."""
        s = self.settings
        lines = [
            f"Optimal base LR (grid argmin of held-out loss, mean of {len(s.seeds)} seed(s)) per {s.vary}; "
            f"{s.steps} steps x {s.batch_size} x {s.seq_len} bytes = {s.tokens:,} tokens per run, "
            f"{'depth' if s.vary == 'width' else 'width'} {s.fixed}:",
            "",
            self.table(),
            "",
        ]
        for param in s.params:
            sh, sp = self.shift(param), self.spread(param)
            if sh is None or sp is None:
                continue
            edge = any(o.at_edge for o in self.optima() if o.param == param)
            note = " (an optimum sits at the edge of the LR grid: widen --lrs)" if edge else ""
            verb = "stays within one grid step" if sp <= 1 else f"moves by up to {sp:.0f} grid steps"
            regret = self.regret(param)
            base = next(o for o in self.optima() if o.param == param and o.size == min(regret))
            worst = max(regret.values())
            lines.append(
                f"{param_label(param)}: the best LR {verb} across {s.vary}s "
                f"{s.sizes[0]}..{s.sizes[-1]} (smallest -> largest: {_fmt_steps(sh)}){note}; training every "
                f"{s.vary} at the best LR of {s.vary} {base.size} (2^{math.log2(base.lr):.0f}) loses at most "
                f"{_fmt_loss(worst)} nats/byte."
            )
        largest = {o.param: o for o in self.optima() if o.size == s.sizes[-1]}
        if len(largest) > 1:
            best = ", ".join(f"{param_label(p)} {o.loss:.3f}" for p, o in largest.items())
            lines.append(f"Best held-out loss at {s.vary} {s.sizes[-1]}: {best}.")
        checks = self.wider_is_better()
        if checks:
            lines += ["", f"Wider is better? Held-out loss at each {s.vary}'s best LR:"]
            for param, c in checks.items():
                path = " -> ".join(f"{loss:.3f}" for loss in c.losses)
                pairs = zip(c.sizes, c.sizes[1:], c.rises, c.tolerance, strict=False)
                bad = [f"{a} -> {b}: {r:+.3f}" for a, b, r, t in pairs if r > t]
                if c.ok:
                    verdict = "yes" if c.expected else "yes (for comparison)"
                elif c.expected:
                    verdict = f"NO, the loss rises at {'; '.join(bad)}: {param_label(param)} should not get worse as it grows"
                else:
                    verdict = f"no ({'; '.join(bad)}; for comparison)"
                lines.append(f"{param_label(param)}: {path} ({s.vary}s {c.sizes[0]}..{c.sizes[-1]}): {verdict}")
            lines.append(f"({next(iter(checks.values())).note})")
        diverged = sum(p.diverged for p in self.points)
        if diverged:
            lines.append(f"{diverged} run(s) diverged (plotted as missing points).")
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike[str]) -> str:
        """Write one row per run; returns the path."""
        fields = list(TransferPoint.model_fields)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for p in sorted(self.points, key=lambda p: (p.param, p.size, p.lr, p.seed)):
                w.writerow(p.model_dump())
        return os.fspath(path)

    def to_frame(self) -> Any:
        """One row per run as a pandas DataFrame (columns of :class:`TransferPoint`).

        Raises:
            ConfigError: pandas is not installed (``pip install pandas``).
        """
        from fxparam.checks.coord import _frame

        return _frame([p.model_dump() for p in self.points])

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write settings, runs, optima and shifts as JSON; returns the path."""
        data = json.loads(self.model_dump_json())
        data["optima"] = [json.loads(o.model_dump_json()) for o in self.optima()]
        data["shift_grid_steps"] = {p: self.shift(p) for p in self.settings.params}
        data["spread_grid_steps"] = {p: self.spread(p) for p in self.settings.params}
        data["regret"] = {p: {str(k): v for k, v in self.regret(p).items()} for p in self.settings.params}
        data["wider_is_better"] = {p: c.model_dump() for p, c in self.wider_is_better().items()}
        Path(path).write_text(json.dumps(data, indent=1, allow_nan=True) + "\n", encoding="utf-8")
        return os.fspath(path)

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Held-out loss vs base LR, one line per size, one panel per parameterization."""
        from fxparam.checks.coord_plot import _pyplot

        plt = _pyplot()
        s = self.settings
        curves = self.curves()
        opts = {(o.param, o.size): o for o in self.optima()}
        fig, axes = plt.subplots(
            1, len(s.params), figsize=(4.3 * len(s.params), 3.9), squeeze=False, sharey=True
        )
        cmap = plt.get_cmap("viridis")
        finite = [p.eval_loss for p in self.points if math.isfinite(p.eval_loss)]
        for ax, param in zip(axes[0], s.params, strict=True):
            for i, size in enumerate(s.sizes):
                pts = curves.get(param, {}).get(size, [])
                if not pts:
                    continue
                color = cmap(i / max(1, len(s.sizes) - 1) * 0.9)
                xs = [math.log2(lr) for lr, _ in pts]
                ys = [loss if math.isfinite(loss) else float("nan") for _, loss in pts]
                ax.plot(xs, ys, marker="o", markersize=3, color=color, label=f"{s.vary} {size}")
                o = opts.get((param, size))
                if o is not None:
                    ax.plot(
                        [math.log2(o.lr)],
                        [o.loss],
                        marker="*",
                        markersize=11,
                        color=color,
                        markeredgecolor="black",
                        markeredgewidth=0.5,
                        linestyle="none",
                    )
            sh = self.shift(param)
            ax.set_title(
                f"{param_label(param)}"
                + (f": best-LR shift {_fmt_steps(sh)} grid steps" if sh is not None else ""),
                fontsize=10,
            )
            ax.set_xlabel("log2 base learning rate")
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel("held-out loss (nats / byte)")
        if finite:
            lo = min(finite)
            best_per_curve = sorted(o.loss for o in opts.values())
            top = min(max(finite), (best_per_curve[-1] if best_per_curve else lo) + 1.0)
            axes[0][0].set_ylim(lo - 0.05 * (top - lo) - 0.01, top)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
        fig.suptitle(
            f"LR transfer across {s.vary} ({s.tokens:,} tokens per run; stars: best LR)", fontsize=10
        )
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        out = os.fspath(path)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _fmt_steps(x: float | None, *, signed: bool = True) -> str:
    if x is None:
        return "–"
    return f"{x:+.0f}" if signed else f"{x:.0f}"


def _fmt_loss(x: float | None) -> str:
    if x is None:
        return "–"
    return "diverged" if math.isinf(x) else f"{x:+.3f}"


def _parabola_vertex(pts: list[tuple[float, float]]) -> float | None:
    (x0, y0), (x1, y1), (x2, y2) = pts
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a <= 0:
        return None
    return -b / (2 * a)


# ---------------------------------------------------------------------- one run

_CORPORA: dict[tuple[str | None, str | None], Any] = {}


def _corpus(path: str | None, tokenizer: str | None = None) -> Any:
    """The token corpus of a data path (cached per process)."""
    from fxparam.checks.data import TokenCorpus, load_tokens

    if (path, tokenizer) not in _CORPORA:
        _CORPORA[(path, tokenizer)] = TokenCorpus(load_tokens(path, tokenizer=tokenizer))
    return _CORPORA[(path, tokenizer)]


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_point(
    settings: TransferSettings, param: str, size: int, lr: float, seed: int, source: Any = None
) -> TransferPoint:
    """Train and evaluate one run of a sweep (what each worker does).

    Args:
        settings: the sweep.
        param, size, lr, seed: which run.
        source: in-memory batches (:class:`fxparam.checks.data.FixedBatches`); None reads
            ``settings.data``.

    Example:
        >>> s = TransferSettings(sizes=[64], fixed=2, params=["mup"], lrs=[1e-3], base_width=64, base_depth=2,
        ...                      steps=20, batch_size=8, seq_len=32, warmup_steps=2, weight_decay=0.0,
        ...                      seeds=[0], eval_batches=2)
        >>> train_point(s, "mup", 64, 1e-3, 0).eval_loss < 5.6
        True
    """
    import fxparam
    from fxparam.checks.coord import lm_loss, looks_ahead
    from fxparam.checks.targets import resolve
    from fxparam.recipes.schedules import d2z

    start, cpu_start = time.perf_counter(), time.process_time()
    width, depth = settings.width_depth(size)
    options = dict(settings.model_options)
    if settings.model == "gpt":
        options.setdefault("seq_len", settings.seq_len)
    make = resolve(settings.model, **options)
    corpus = source if source is not None else _corpus(settings.data, settings.tokenizer)
    torch.manual_seed(seed)
    model = make(width=width, depth=depth)
    base: dict[str, Any] = _base_kwargs(param, settings.base_width, settings.base_depth)
    if settings.output_multiplier != 1.0 and "base_width" in base:  # muP / CompleteP only
        base["output_multiplier"] = settings.output_multiplier
    try:
        fxparam.transform(model, param, **base)
    except CaptureError as exc:  # a model fxparam cannot make inputs for: a slice of its own data
        if "example inputs" not in str(exc):
            raise
        if source is not None:
            sample = source.train[0][0]
        else:
            sample = corpus.batch(2, settings.seq_len, generator=torch.Generator().manual_seed(0))[0]
        fxparam.transform(model, param, example_inputs=(sample[:2],), **base)
    device, dtype = torch.device(settings.device), _DTYPES[settings.dtype]
    if device.type != "cpu" or dtype != torch.float32:
        model.to(device=device, dtype=dtype)
    model.train()
    opt = fxparam.optimizer(
        model, torch.optim.AdamW, lr=lr, weight_decay=settings.weight_decay, betas=settings.betas
    )
    sched = d2z(opt, total_steps=settings.steps, warmup_steps=settings.warmup_steps)
    if source is not None:
        train_batches = iter(source.train_batches(settings.steps))
    else:
        gen = torch.Generator().manual_seed(10_000 + seed)  # same batches for every size, LR and param
        train_batches = (
            corpus.batch(settings.batch_size, settings.seq_len, generator=gen) for _ in range(settings.steps)
        )
    # a loss three times that of a uniform guess over the vocabulary is a divergence
    limit = 3 * math.log(max(256, getattr(corpus, "vocab", 256)))
    tail = max(1, settings.steps // 10)
    recent: list[float] = []
    diverged = False
    for step in range(settings.steps):
        batch = tuple(t.to(device) for t in next(train_batches))
        if step == 0 and looks_ahead(model, batch[0]):
            raise ConfigError(
                f"transfer: {type(model).__name__} ({settings.model}) attends to later tokens (its logits at a position "
                "change when a later token does): a next-token loss shows it every target, so its held-out loss "
                "measures copying, not language modelling. Sweep a causal model (hf:gpt2, hf:llama, a causal factory)"
            )
        loss = lm_loss(model, batch)
        value = loss.item()
        if not math.isfinite(value) or value > limit:
            diverged = True
            break
        if step >= settings.steps - tail:
            recent.append(value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    eval_loss = float("nan")
    if not diverged:
        model.eval()
        if source is not None:
            held_out = source.eval_batches(settings.eval_batches)
        else:
            egen = torch.Generator().manual_seed(777)
            held_out = [
                corpus.batch(settings.batch_size, settings.seq_len, split="eval", generator=egen)
                for _ in range(settings.eval_batches)
            ]
        total = 0.0
        with torch.no_grad():
            for b in held_out:
                total += float(lm_loss(model, tuple(t.to(device) for t in b)))
        eval_loss = total / len(held_out)
        if not math.isfinite(eval_loss):
            diverged, eval_loss = True, float("nan")
    return TransferPoint(
        key=settings.run_key(),
        param=param,
        size=size,
        width=width,
        depth=depth,
        lr=lr,
        seed=seed,
        train_loss=sum(recent) / len(recent) if recent else float("nan"),
        eval_loss=eval_loss,
        diverged=diverged,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
    )


def _train_task(task: tuple[Any, ...]) -> TransferPoint:
    return train_point(*task)


# ---------------------------------------------------------------------- parallel map


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def parallel_map(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    jobs: int = 1,
    threads: int = 1,
    on_result: Callable[[Any, Any], None],
) -> None:
    """Run ``fn`` over ``tasks`` in ``jobs`` processes of ``threads`` torch threads each.

    Results arrive in completion order through ``on_result(task, result)``.  ``jobs=1``
    runs in this process (no pickling, easy debugging).  Small models train faster as
    several single-threaded processes than as one multi-threaded one, and a multi-threaded
    torch on a busy machine can be many times slower still.

    Example:
        >>> parallel_map(abs, [-1, -2], on_result=lambda t, r: print(t, r))
        -1 1
        -2 2
    """
    if jobs <= 1 or len(tasks) <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for task in tasks:
                on_result(task, fn(task))
        finally:
            torch.set_num_threads(previous)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: a forked child of a process that already ran OpenMP threads can hang.
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)),
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        pending = {pool.submit(fn, t): t for t in tasks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = pending.pop(fut)
                    on_result(task, fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def default_jobs() -> int:
    """Worker processes to use: one per CPU core (at most 16)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, n))


# ---------------------------------------------------------------------- the sweep


def _digest(path: str | None, tokenizer: str | None = None) -> str:
    if tokenizer is None and (path is None or Path(path).is_file() and Path(path).suffix not in (".npy", ".bin")):
        from fxparam.checks.data import load_text

        # text read as bytes: the digest of those bytes (for UTF-8 text, the digest earlier versions recorded)
        raw = load_text(None).encode("utf-8") if path is None else Path(path).read_bytes()
        return hashlib.sha256(raw).hexdigest()[:16]
    return _corpus(path, tokenizer).digest()


def load_points(path: str | os.PathLike[str]) -> list[TransferPoint]:
    """Runs recorded in a JSON-lines results file (unreadable lines are skipped)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(TransferPoint.model_validate_json(line))
        except ValueError:
            continue  # a line cut short by an interrupted run
    return out


def transfer(
    *,
    model: str = "gpt",
    model_options: dict[str, Any] | None = None,
    vary: Vary = "width",
    sizes: Iterable[int] = (32, 64, 128, 256),
    fixed: int | None = None,
    params: Iterable[str] | None = None,
    lrs: Iterable[float] | None = None,
    steps: int = 400,
    batch_size: int = 8,
    seq_len: int = 64,
    warmup_steps: int | None = None,
    weight_decay: float = 0.0,
    seeds: Iterable[int] = (0,),
    eval_batches: int = 16,
    base_width: int | None = None,
    base_depth: int | None = None,
    data: Any = None,
    eval_data: Any = None,
    tokenizer: str | os.PathLike[str] | None = None,
    output_multiplier: float = 1.0,
    device: str = "cpu",
    dtype: str = "float32",
    results: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    threads: int = 1,
    progress: Callable[[TransferPoint], None] | None = None,
) -> TransferResult:
    """Train every (parameterization, size, LR, seed) and collect held-out losses.

    Args:
        model: ``"gpt"`` (built-in), ``"hf:<arch>"`` or ``"module.path:factory"`` taking
            ``width=`` and ``depth=``; it must map byte tokens ``[B, T]`` to logits.
        model_options: built-in GPT options (default ``GPT_OPTIONS``: head dim 16).
        vary: ``"width"`` or ``"depth"``.
        sizes: widths (or depths) to train.
        fixed: the depth when varying width (default 2), the width when varying depth
            (default 64).
        params: parameterizations (default ``DEFAULT_PARAMS[vary]``).
        lrs: base learning rates (default ``lr_grid(-12, -6)``).
        steps: updates per run (tokens per run = steps * batch_size * seq_len).
        warmup_steps: default 10% of ``steps``.
        weight_decay: AdamW coupled weight decay (scaled per group by the plan).
        seeds: seeds per point (losses are averaged over them).
        base_width: width of the base model (default: the smallest width when varying
            width, ``fixed`` when varying depth).
        base_depth: depth of the base model (default: the smallest depth when varying
            depth, ``fixed`` when varying width).
        data: a data path (text, ``.npy`` / ``.bin`` token ids, a ``datasets`` folder; see
            :mod:`fxparam.checks.data`), or a DataLoader / iterable of batches (materialised
            once: every run sees the same batches; ``batch_size`` and ``seq_len`` come from
            them). Default: Python's documentation as bytes, no download.
        eval_data: held-out batches for in-memory ``data`` (default: its last
            ``eval_batches`` batches are held out).
        tokenizer: a local tokenizer (folder or ``tokenizer.json``) for text ``data``; the
            built-in GPT and ``hf:`` models get its vocabulary size unless ``vocab`` is set.
        output_multiplier: muP / CompleteP ``alpha_out`` at the base size (a base hyperparameter,
            tuned like the LR on the small model; ``fxparam transfer`` uses 8 over width for the
            built-in GPT it was tuned on, see docs/results.md); SP runs do not use it.
        device: torch device to train on (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` parameters.
        results: JSON-lines file runs are appended to as they finish; runs already in it
            with the same settings are not trained again.
        jobs: worker processes (each trains one run at a time).
        threads: torch threads per worker.
        progress: called with each finished (or resumed) run.

    Returns:
        A :class:`TransferResult` holding every run of this sweep.

    Example:
        >>> res = transfer(sizes=[64, 128], lrs=lr_grid(-9, -6), steps=40, results="runs.jsonl")
        >>> res.shift("mup")
        0.0
    """
    sizes = sorted(set(sizes))
    if not sizes or any(s <= 0 for s in sizes):
        raise ConfigError(f"transfer: sizes must be positive integers, got {sizes}")
    if vary not in ("width", "depth"):
        raise ConfigError(f"transfer: vary must be 'width' or 'depth', got {vary!r}")
    params = list(params) if params is not None else list(DEFAULT_PARAMS[vary])
    if not params:
        raise ConfigError("transfer: no parameterization given")
    from fxparam.configs import resolve_config

    for p in params:
        resolve_config(p, **_base_kwargs(p, 64, 2))  # unknown names fail here, before any training
    lrs = sorted(set(lrs)) if lrs is not None else lr_grid(-12, -6)
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise ConfigError(f"transfer: learning rates must be positive, got {lrs}")
    if isinstance(seeds, int):  # the CLI's --seeds is a count; here they are the seed values
        raise ConfigError(f"transfer: seeds are the seed values, e.g. seeds=range({seeds}) for {seeds} seed(s); got the int {seeds}")
    seeds = sorted(set(seeds))
    if not seeds:
        raise ConfigError("transfer: need at least one seed")
    if steps <= 0 or batch_size <= 0 or seq_len <= 0 or eval_batches <= 0:
        raise ConfigError("transfer: steps, batch_size, seq_len and eval_batches must be positive")
    if fixed is None:
        fixed = 2 if vary == "width" else 64
    if base_width is None:
        base_width = sizes[0] if vary == "width" else fixed
    if base_depth is None:
        base_depth = sizes[0] if vary == "depth" else fixed
    warmup = max(0, steps // 10) if warmup_steps is None else warmup_steps
    if warmup >= steps:
        raise ConfigError(f"transfer: warmup_steps={warmup} must be smaller than steps={steps}")
    check_device(device, dtype)
    source = None
    tok = os.fspath(tokenizer) if tokenizer is not None else None
    if data is None or isinstance(data, (str, os.PathLike)):
        data_path = os.fspath(data) if data is not None else None
        digest = _digest(data_path, tok)
        vocab = _corpus(data_path, tok).vocab if (tok is not None or data_path is not None) else None
        if tok is not None:
            from fxparam.checks.data import load_tokenizer, tokenizer_vocab

            vocab = max(vocab or 0, tokenizer_vocab(load_tokenizer(tok)))
    else:
        from fxparam.checks.data import FixedBatches

        data_path = None
        source = FixedBatches(data, eval_data, eval_count=0 if eval_data is not None else eval_batches)
        digest, vocab = source.digest(), source.vocab
        batch_size, seq_len = (int(n) for n in source.train[0][0].shape[:2])
    options = dict(GPT_OPTIONS if model_options is None and model == "gpt" else model_options or {})
    if vocab is not None and vocab > 256 and "vocab" not in options and (model == "gpt" or model.startswith("hf:")):
        options["vocab"] = vocab  # the data's ids need that many embedding rows and logits
    settings = TransferSettings(
        model=model,
        model_options=options,
        vary=vary,
        sizes=sizes,
        fixed=fixed,
        params=params,
        lrs=lrs,
        base_width=base_width,
        base_depth=base_depth,
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        warmup_steps=warmup,
        weight_decay=weight_decay,
        seeds=seeds,
        eval_batches=eval_batches,
        data=data_path,
        data_digest=digest,
        tokenizer=tok,
        output_multiplier=output_multiplier,
        device=str(device),
        dtype=dtype,  # type: ignore[arg-type]
    )
    key = settings.run_key()
    wanted = {(p, s, lr, seed) for p in params for s in sizes for lr in lrs for seed in seeds}
    done: dict[tuple[str, int, float, int], TransferPoint] = {}
    if results is not None:
        for pt in load_points(results):
            ident = (pt.param, pt.size, pt.lr, pt.seed)
            if pt.key == key and ident in wanted:
                done[ident] = pt
    resumed = len(done)
    reused = set(done)
    if progress is not None:
        for pt in done.values():
            progress(pt)
    todo = [(settings, p, s, lr, seed, source) for (p, s, lr, seed) in wanted if (p, s, lr, seed) not in done]
    # biggest runs first, so the pool does not end waiting on one large model
    todo.sort(key=lambda t: (-_cost(settings, t[2]), t[1], t[3], t[4]))
    start = time.perf_counter()
    sink = open(results, "a", encoding="utf-8") if results is not None else None  # noqa: SIM115
    try:

        def collect(task: Any, point: TransferPoint) -> None:
            done[(point.param, point.size, point.lr, point.seed)] = point
            if sink is not None:
                sink.write(point.model_dump_json() + "\n")
                sink.flush()
            if progress is not None:
                progress(point)

        parallel_map(_train_task, todo, jobs=jobs, threads=threads, on_result=collect)
    finally:
        if sink is not None:
            sink.close()
    points = sorted(done.values(), key=lambda p: (params.index(p.param), p.size, p.lr, p.seed))
    cpu = sum(p.cpu_seconds for ident, p in done.items() if ident not in reused)
    return TransferResult(
        settings=settings,
        points=points,
        seconds=time.perf_counter() - start,
        cpu_seconds=cpu,
        resumed=resumed,
    )


#: Why float16 parameters are refused: Adam's eps (1e-8) is 0 in float16, so every parameter with a
#: zero gradient (embedding rows absent from the batch) steps by 0/0 = NaN after the first update,
#: and the slopes (NaN) would read as a failed check. Mixed precision needs float32 master weights
#: and loss scaling (torch.autocast + GradScaler), which these checks do not do.
FLOAT16_REFUSAL = (
    "dtype float16: float16 parameters cannot train under Adam here (its eps 1e-8 rounds to 0 in float16, "
    "so parameters with a zero gradient, e.g. embedding rows absent from the batch, become 0/0 = NaN after "
    "one step); use --dtype bfloat16 (float32's exponent range) or float32"
)


def check_device(device: str, dtype: str) -> None:
    """Refuse a device torch cannot use here, or an unknown dtype, before any training.

    Raises:
        ConfigError: naming the device or dtype and what is available; ``float16`` (see
            :data:`FLOAT16_REFUSAL`: pure-float16 Adam turns untouched parameters into NaN).
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    if dtype == "float16":
        raise ConfigError(FLOAT16_REFUSAL)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here (torch {torch.__version__})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here")


def _base_kwargs(param: str, base_width: int, base_depth: int) -> dict[str, int]:
    from fxparam.configs import base_kwargs  # the configs say which base fields they need

    return base_kwargs(param, base_width=base_width, base_depth=base_depth)


def _cost(settings: TransferSettings, size: int) -> float:
    width, depth = settings.width_depth(size)
    return width * width * max(depth, 1)


__all__ = [
    "DEFAULT_PARAMS",
    "GPT_OPTIONS",
    "Optimum",
    "TransferPoint",
    "TransferResult",
    "TransferSettings",
    "WiderCheck",
    "default_jobs",
    "lr_grid",
    "load_points",
    "param_label",
    "parallel_map",
    "train_point",
    "transfer",
]
