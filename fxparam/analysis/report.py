"""Human-readable tables for an Analysis (``print(analysis)`` and ``fxparam inspect``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fxparam._text import table

if TYPE_CHECKING:
    from fxparam.analysis.facts import Analysis


_table = table  # 0.1 name; the helper lives in fxparam._text


def format_analysis(a: Analysis, *, max_rows: int = 60) -> str:
    lines = [
        f"{a.model_class}: width {a.width}, depth {a.depth} "
        f"({len(a.residuals)} residual sites), {len(a.attention)} attention sites, "
        f"{len(a.norms)} norms, captured by {a.capture_method} in {a.capture_seconds:.2f}s",
        "",
    ]
    rows = []
    for name, p in a.params.items():
        dims = "".join("W" if i in p.width_dims else "-" for i in range(len(p.shape)))  # per axis
        rows.append([name, p.role, "x".join(map(str, p.shape)), dims, p.tied_to or "", p.reason])
    from fxparam._fold import fold_rows  # blocks.{0..23}.attn.q: one row per repeated parameter

    rows = fold_rows(rows)
    if len(rows) > max_rows:
        rows = rows[: max_rows // 2] + [["...", "", "", "", "", ""]] + rows[-max_rows // 2 :]
    lines += _table(rows, ["parameter", "role", "shape", "width axes", "tied to", "why"])
    if a.residuals:
        lines += ["", "residual sites (first block, last block):"]
        shown = [r for r in a.residuals if r.block in (a.blocks[0], a.blocks[-1])]
        lines += _table([[r.block, ", ".join(r.branches), ", ".join(r.output_modules)] for r in shown],
                        ["block", "branches", "multiplier applied at"])
    if a.attention:
        lines += ["", "attention (first):"]
        at = a.attention[0]
        lines += _table([[at.module, at.kind, at.head_dim, f"{at.scale:.4g}" if at.scale is not None else "not found", at.scale_attr or "(none)"]],
                        ["module", "kind", "head dim", "logit scale", "scale attribute"])
    if a.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in a.notes]
    if a.tied:
        lines += ["", "tied: " + "; ".join(" = ".join(g) for g in a.tied)]
    if a.norms:
        kinds = sorted({n.kind for n in a.norms})
        lines += ["", f"norms: {len(a.norms)} ({', '.join(kinds)}), e.g. {a.norms[0].module}"]
    return "\n".join(lines)
