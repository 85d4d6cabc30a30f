"""0.1 module paths keep importing after the issue-12 re-layout, and warn where they moved.

The expected table is the 0.1 layout written out by hand (not read from ``fxparam._moved``).
"""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

# 0.1 path -> 0.2 home
OLD_TO_NEW = {
    "fxparam.coord": "fxparam.checks.coord",
    "fxparam.coord_plot": "fxparam.checks.coord_plot",
    "fxparam.transfer": "fxparam.checks.transfer",
    "fxparam.data": "fxparam.checks.data",
    "fxparam.targets": "fxparam.checks.targets",
    "fxparam.hf": "fxparam.models.hf",
    "fxparam.alibi": "fxparam.models.alibi",
    "fxparam.gns._swap": "fxparam.lowering.norm_swap",
}


def _fresh_import(name: str) -> tuple[object, list[warnings.WarningMessage]]:
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize(("old", "new"), sorted(OLD_TO_NEW.items()))
def test_old_path_is_the_new_module_and_warns_at_the_import_line(old: str, new: str) -> None:
    module, caught = _fresh_import(old)
    assert module is importlib.import_module(new)  # one module object: monkeypatching either name works
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert new in str(caught[0].message)
    # attributed to the caller's import (here importlib.import_module's frame), not to "sys" past the stack's
    # top, where Python's default filter (shown only in __main__) would hide it
    assert caught[0].filename.endswith(("importlib/__init__.py", "test_moved_paths.py")), caught[0].filename


def test_warning_points_at_a_scripts_import_line(tmp_path) -> None:
    import subprocess

    script = tmp_path / "user.py"
    script.write_text("import fxparam.alibi\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # Python's default filters show a DeprecationWarning only when it is attributed to __main__
    assert f"{script}:1: DeprecationWarning: fxparam.alibi moved to fxparam.models.alibi" in run.stderr


def test_public_schedules_path_is_silent() -> None:
    module, caught = _fresh_import("fxparam.schedules")
    assert module is importlib.import_module("fxparam.recipes.schedules")
    assert caught == []
    import fxparam

    assert callable(fxparam.schedules.d2z)


def test_01_names_still_import_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        import fxparam
        from fxparam.lowering.eager import PLAN_ATTR, plan_of, unwrap
        from fxparam.optim import watch
        from fxparam.plan import PLAN_ATTR as home_attr
        from fxparam.plan import plan_of as home_plan_of
        from fxparam.plan import unwrap as home_unwrap
        from fxparam.transform import apply_plan, plan, transform

    assert (PLAN_ATTR, plan_of, unwrap) == (home_attr, home_plan_of, home_unwrap)
    assert callable(watch)
    assert (transform, plan, apply_plan) == (fxparam.transform, fxparam.plan, fxparam.apply_plan)
