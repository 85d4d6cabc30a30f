"""Docs that fxparam's docstrings point to ship in the repository's docs/ (issue 17, case 6)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docstrings_point_only_to_shipped_docs():
    missing, private = [], []
    for path in sorted((ROOT / "fxparam").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "shared/reference" in text:
            private.append(path.relative_to(ROOT).as_posix())
        for ref in re.findall(r"docs/[\w./-]+\.md", text):
            if not (ROOT / ref).is_file():
                missing.append(f"{path.relative_to(ROOT).as_posix()}: {ref}")
    assert not private, f"docstrings cite shared/reference, which does not ship; use docs/reference: {private}"
    assert not missing, f"docstrings cite docs that do not exist: {missing}"
