"""The issue-14 modules' docstring examples run, and every public name of them has one."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

MODULES = ["fxparam.lowering.verify", "fxparam.lowering.fold", "fxparam.lowering._rollback", "fxparam.checkpoint"]
RECORDS = {"SiteCheck", "VerifyReport", "Snapshot", "CONFIG_ATTR", "METADATA_KEY"}  # results/constants, no example


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("name", MODULES)
def test_public_names_have_examples_or_are_records(name: str) -> None:
    mod = importlib.import_module(name)
    for public in mod.__all__:
        doc = inspect.getdoc(getattr(mod, public)) or ""
        if public not in RECORDS:
            assert ">>>" in doc or "Raises:" in doc, f"{name}.{public} has neither an example nor a Raises section"
