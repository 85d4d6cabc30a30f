"""Fold table rows of repeated blocks: ``blocks.0.attn.q`` ... ``blocks.23.attn.q`` -> ``blocks.{0..23}.attn.q``.

A 24-layer model has the same parameter 24 times with the same role, shape and multipliers;
listing each makes ``plan.summary()`` and the ``inspect`` table hundreds of lines long. Rows
whose names differ only in integer path components and whose other cells are equal fold into
one row; a block that differs (say, the first block with its own LR) keeps a row of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_NUM = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole dotted component that is an integer


def _span(values: Sequence[int]) -> str:
    vs = sorted(set(values))
    if len(vs) > 2 and vs == list(range(vs[0], vs[-1] + 1)):
        return f"{{{vs[0]}..{vs[-1]}}}"
    return "{" + ",".join(map(str, vs)) + "}"


def fold_names(names: Sequence[str]) -> str | None:
    """One folded name for ``names`` that differ only in integer components, or None.

    The names must form the full grid of their varying indices (``layers.{0..3}.experts.{0..7}``
    stands for all 32 combinations, never for a subset).

    Example:
        >>> fold_names(["blocks.0.attn.q", "blocks.1.attn.q", "blocks.2.attn.q"])
        'blocks.{0..2}.attn.q'
        >>> fold_names(["h.0.w", "h.2.w"])
        'h.{0,2}.w'
        >>> fold_names(["a.0.w", "b.1.w"]) is None
        True
    """
    if not names:
        return None
    if len(names) == 1:
        return names[0]
    parts = [_NUM.split(n) for n in names]
    nums = [[int(x) for x in _NUM.findall(n)] for n in names]
    if any(p != parts[0] for p in parts) or len({len(n) for n in nums}) != 1:
        return None
    columns = list(zip(*nums, strict=True))
    varying = [i for i, col in enumerate(columns) if len(set(col)) > 1]
    size = 1
    for i in varying:
        size *= len(set(columns[i]))
    if size != len(set(names)) or len(set(names)) != len(names):
        return None
    out = [parts[0][0]]
    for i, col in enumerate(columns):
        out.append(_span(col) if i in varying else str(col[0]))
        out.append(parts[0][i + 1])
    return "".join(out)


def fold_rows(rows: Sequence[Sequence[Any]], name_col: int = 0) -> list[list[Any]]:
    """Fold rows that differ only in integer components of ``row[name_col]``.

    Rows fold when every other cell is equal; the folded row sits where its group's first row
    was. Groups that do not form a full grid of indices stay unfolded.

    Args:
        rows: table rows (lists of cells); ``row[name_col]`` is a dotted name such as an FQN.
        name_col: the column holding the name.

    Returns:
        New rows (cells are not copied).

    Example:
        >>> fold_rows([["blocks.0.w", "hidden"], ["blocks.1.w", "hidden"], ["head", "readout"]])
        [['blocks.{0,1}.w', 'hidden'], ['head', 'readout']]
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, row in enumerate(rows):
        name = str(row[name_col])
        key = (_NUM.sub("#", name), *(str(c) for j, c in enumerate(row) if j != name_col))
        groups.setdefault(key, []).append(i)
    out: list[list[Any]] = []
    placed: set[int] = set()
    for i, row in enumerate(rows):
        if i in placed:
            continue
        name = str(row[name_col])
        key = (_NUM.sub("#", name), *(str(c) for j, c in enumerate(row) if j != name_col))
        members = groups[key]
        folded = fold_names([str(rows[k][name_col]) for k in members]) if len(members) > 1 else None
        if folded is None:
            out.append(list(row))
            placed.add(i)
            continue
        new = list(row)
        new[name_col] = folded
        out.append(new)
        placed.update(members)
    return out


__all__ = ["fold_names", "fold_rows"]
