"""The pipeline's layers never call back up (issue 12), read from the source with ``ast``.

- ``fxparam/capture.py``, ``fxparam/analysis/``, ``fxparam/passes/`` and ``fxparam/lowering/``
  import neither the front door (``fxparam.api``, its 0.1 alias ``fxparam.transform``) nor
  the package root ``fxparam``;
- ``fxparam.optim`` and the lowering modules do not import each other (both depend on
  ``fxparam.plan``).

Every import counts, function-local ones included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fxparam"
FRONT_DOOR = ("fxparam.api", "fxparam.transform")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of everything ``source`` imports: ``import a.b`` -> "a.b";
    ``from a import b`` -> "a" and "a.b" (b may be a module); relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _is(name: str, target: str) -> bool:
    return name == target or name.startswith(target + ".")


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The layering rules broken by ``source`` (the text of ``module``)."""
    found = []
    lower_layer = module == "fxparam.capture" or any(
        _is(module, p) for p in ("fxparam.analysis", "fxparam.passes", "fxparam.lowering")
    )
    for line, name in imported(source, module, is_package):
        where = f"{module}:{line} imports {name}"
        if lower_layer and name == "fxparam":
            found.append(f"{where} (the package root)")
        if lower_layer and any(_is(name, door) for door in FRONT_DOOR):
            found.append(f"{where} (the front door)")
        if module == "fxparam.optim" and _is(name, "fxparam.lowering"):
            found.append(f"{where} (optim must not depend on a lowering)")
        if _is(module, "fxparam.lowering") and _is(name, "fxparam.optim"):
            found.append(f"{where} (a lowering must not depend on optim)")
    return found


def _checked_files() -> list[Path]:
    files = [PKG / "capture.py", PKG / "optim.py"]
    for sub in ("analysis", "passes", "lowering"):
        files += sorted((PKG / sub).rglob("*.py"))
    return files


def test_the_checked_layers_exist() -> None:
    names = {_module_name(f) for f in _checked_files()}
    assert {"fxparam.capture", "fxparam.optim"} <= names
    assert {"fxparam.lowering.eager", "fxparam.lowering.graph", "fxparam.lowering.compile",
            "fxparam.passes._registry", "fxparam.analysis"} <= names


@pytest.mark.parametrize("path", _checked_files(), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_no_layer_calls_back_up(path: Path) -> None:
    assert violations(path.read_text(), _module_name(path), path.name == "__init__.py") == []


# ---------------------------------------------------------------- negative controls: the checker can fail

@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("fxparam.lowering.compile", "def f():\n    from fxparam.api import plan\n", "front door"),
        ("fxparam.lowering.compile", "def f():\n    from fxparam.transform import plan\n", "front door"),
        ("fxparam.lowering.compile", "from .. import api\n", "front door"),
        ("fxparam.passes._registry", "def v():\n    from fxparam import __version__\n", "package root"),
        ("fxparam.analysis.report", "import fxparam\n", "package root"),
        ("fxparam.capture", "import fxparam.api as door\n", "front door"),
        ("fxparam.optim", "def watch():\n    from fxparam.lowering.eager import plan_of\n", "optim must not"),
        ("fxparam.optim", "from fxparam import lowering\n", "optim must not"),
        ("fxparam.lowering.eager", "def f():\n    from fxparam.optim import watch\n", "must not depend on optim"),
        ("fxparam.lowering.eager", "from ..optim import watch\n", "must not depend on optim"),
    ],
)
def test_the_checker_flags_each_kind_of_back_edge(module: str, source: str, why: str) -> None:
    found = violations(source, module)
    assert any(why in f for f in found), found


def test_the_checker_allows_the_layers_own_dependencies() -> None:
    ok = "from fxparam.plan import attach\nfrom fxparam._version import __version__\nfrom fxparam.errors import X\n"
    assert violations(ok, "fxparam.lowering.eager") == []
    assert violations(ok + "from fxparam.plan import plan_of\n", "fxparam.optim") == []
    assert violations("import fxparam\nfrom fxparam.api import plan\n", "fxparam.checks.coord") == []  # a consumer
