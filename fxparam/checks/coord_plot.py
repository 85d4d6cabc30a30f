"""Coordinate-check figures in the style of the muP papers.

One panel per optimizer step (init, then after each step); x = width (or depth) on a
log2 axis, y = activation RMS on a log axis; one line per activation call site, coloured
by kind (embedding, branch, attention logits, logits, final residual stream).  Flat lines
mean the parameterization keeps activations at a width- (depth-) independent scale; under
SP they rise as a power of width after the first step.

matplotlib is an optional dependency (``pip install "fxparam[plot]"``); it is imported
lazily, with the Agg backend, so plotting works on machines without a display.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fxparam.errors import FxparamError

if TYPE_CHECKING:  # pragma: no cover
    from fxparam.checks.coord import Axis, CoordCheck, Stat

#: Colour per activation kind (matplotlib's tab10 palette, fixed so figures compare).
KIND_COLORS: dict[str, str] = {
    "embedding": "tab:green",
    "branch": "tab:blue",
    "attn_logits": "tab:orange",
    "logits": "tab:red",
    "residual": "tab:purple",
}
_KIND_LABELS = {
    "embedding": "embedding out",
    "branch": "residual branch out",
    "attn_logits": "attention logits",
    "logits": "output logits",
    "residual": "final residual stream",
}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise FxparamError(
            'plotting needs matplotlib: pip install "fxparam[plot]" (or pip install matplotlib)'
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(
    cc: CoordCheck, axis: Axis, stat: Stat
) -> tuple[dict[int, dict[tuple[str, str], list[tuple[int, float]]]], int | None]:
    """step -> (kind, key) -> sorted [(x, mean value)], along ``axis`` at one fixed other size.

    The fixed size is the one with the most points along ``axis`` (ties: the smallest), so a
    check that swept both width and depth plots each sweep on its own.
    """
    table = cc.mean_table(stat)
    counts: dict[int, set[int]] = defaultdict(set)
    for _kind, _key, _step, width, depth in table:
        fixed, x = (depth, width) if axis == "width" else (width, depth)
        counts[fixed].add(x)
    if not counts:
        return {}, None
    fixed_at = min(counts, key=lambda f: (-len(counts[f]), f))
    out: dict[int, dict[tuple[str, str], list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for (kind, key, step, width, depth), value in table.items():
        fixed, x = (depth, width) if axis == "width" else (width, depth)
        if fixed == fixed_at and value > 0:
            out[step][(kind, key)].append((x, value))
    for by_site in out.values():
        for pts in by_site.values():
            pts.sort()
    return out, fixed_at


def plot_coord_checks(
    checks: Sequence[CoordCheck],
    path: str | os.PathLike[str],
    *,
    axis: Axis = "width",
    stat: Stat = "rms",
    titles: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
) -> str:
    """Draw several coordinate checks as rows of one figure (one column per step) and save it.

    Args:
        checks: results of :func:`fxparam.coord_check`, e.g. SP, muP and CompleteP.
        path: where to write the image (the suffix picks the format: ``.png``, ``.pdf``...).
        axis: ``"width"`` or ``"depth"`` on the x axis.
        stat: ``"rms"`` (activation RMS) or ``"delta"`` (RMS of the change since init).
        titles: one row label per check (default: each check's config name).
        kinds: activation kinds to draw (default: all; a depth figure usually wants
            ``["residual"]``).

    Returns:
        The path written.

    Example:
        >>> ccs = [fxparam.coord_check(make, widths=[64, 128, 256], config=c) for c in ("sp", "mup")]
        >>> plot_coord_checks(ccs, "coord_check.png", titles=["SP", "muP"])
        'coord_check.png'
    """
    if not checks:
        raise FxparamError("plot_coord_checks: nothing to plot (no coordinate checks given)")
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatterMathtext, LogLocator, NullLocator

    titles = list(titles) if titles is not None else [cc.config for cc in checks]
    n_steps = max(cc.steps for cc in checks) + 1
    fig, axes = plt.subplots(
        len(checks), n_steps, figsize=(2.7 * n_steps + 0.6, 2.5 * len(checks) + 0.7), squeeze=False
    )
    used_kinds: list[str] = []
    ranges: list[tuple[Any, float, float]] = []  # (axes, log2 min, log2 max) of what each panel shows
    all_x: set[int] = set()
    for row, (cc, title) in enumerate(zip(checks, titles, strict=True)):
        series, fixed_at = _series(cc, axis, stat)
        for step in range(n_steps):
            ax = axes[row][step]
            ys_all: list[float] = []
            for (kind, _key), pts in sorted(series.get(step, {}).items()):
                if (kinds is not None and kind not in kinds) or len(pts) < 2:
                    continue
                if kind not in used_kinds:
                    used_kinds.append(kind)
                xs, ys = zip(*pts, strict=True)
                all_x.update(xs)
                ys_all += ys
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    markersize=2.5,
                    linewidth=1.0,
                    alpha=0.75,
                    color=KIND_COLORS.get(kind, "tab:gray"),
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.grid(True, which="major", alpha=0.3)
            ax.tick_params(labelsize=7)
            if ys_all:
                ranges.append((ax, math.log2(min(ys_all)), math.log2(max(ys_all))))
            if row == 0:
                ax.set_title("init" if step == 0 else f"after step {step}", fontsize=9)
            if row == len(checks) - 1:
                ax.set_xlabel(axis, fontsize=8)
            if step == 0:
                other = "depth" if axis == "width" else "width"
                where = f", {other} {fixed_at}" if fixed_at is not None else ""
                label = "RMS" if stat == "rms" else "RMS of change"
                ax.set_ylabel(f"{title}{where}\n{label}", fontsize=8)
    # Every panel spans the same number of octaves, at least as many as the x axis, so a
    # line's visual slope is its power-law exponent: flat reads flat and x^1 reads diagonal.
    if ranges and all_x:
        x_octaves = math.log2(max(all_x) / min(all_x))
        span = max(max(hi - lo for _, lo, hi in ranges), x_octaves) * 1.15 + 0.5
        for ax, lo, hi in ranges:
            mid = (lo + hi) / 2
            ax.set_ylim(2 ** (mid - span / 2), 2 ** (mid + span / 2))
    if all_x:
        ticks = sorted(all_x)
        for ax in axes.flat:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_locator(LogLocator(base=2, numticks=6))
            ax.yaxis.set_major_formatter(LogFormatterMathtext(base=2))
            ax.yaxis.set_minor_locator(NullLocator())
    order = [k for k in KIND_COLORS if k in used_kinds] + [k for k in used_kinds if k not in KIND_COLORS]
    handles = [
        Line2D(
            [],
            [],
            color=KIND_COLORS.get(k, "tab:gray"),
            marker="o",
            markersize=3,
            label=_KIND_LABELS.get(k, k),
        )
        for k in order
    ]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(
        f"Coordinate check: activation {stat.upper() if stat == 'rms' else 'change'} vs {axis} "
        "(flat = scale-invariant)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = os.fspath(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_coord_check(
    cc: CoordCheck, path: str | os.PathLike[str], axis: Axis = "width", stat: Stat = "rms"
) -> str:
    """Draw one coordinate check (one panel per step) and save it; returns the path.

    Example:
        >>> cc = fxparam.coord_check(make, widths=[64, 128, 256], config="mup")
        >>> cc.plot("mup_width.png")  # calls plot_coord_check
        'mup_width.png'
    """
    kinds = ["residual"] if axis == "depth" else None
    return plot_coord_checks([cc], path, axis=axis, stat=stat, kinds=kinds)


__all__ = ["KIND_COLORS", "plot_coord_check", "plot_coord_checks"]
