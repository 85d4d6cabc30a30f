"""Plain-text tables shared by the reports (``print(analysis)``, ``Plan.summary()``, the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["table"]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    """Left-aligned columns, a dashed rule under the header; one string per line.

    Args:
        rows: the cells, row by row (converted with ``str``); every row as long as ``header``.
        header: the column titles.

    Returns:
        ``[header line, rule line, *row lines]`` (lines keep their trailing padding).

    Example:
        >>> for line in table([["a", 1], ["bcd", 22]], ["name", "n"]):
        ...     print(line.rstrip())
        name  n
        ----  --
        a     1
        bcd   22
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*map(str, r)) for r in rows]
