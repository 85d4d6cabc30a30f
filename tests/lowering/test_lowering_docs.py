"""The lowering modules' docstring examples run, and every public name has one."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

MODULES = ["fxparam.lowering.graph", "fxparam.lowering.compile"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("name", MODULES)
def test_public_names_are_sorted_and_have_examples(name: str) -> None:
    mod = importlib.import_module(name)
    assert list(mod.__all__) == sorted(mod.__all__)
    for public in mod.__all__:
        doc = inspect.getdoc(getattr(mod, public)) or ""
        if public != "GraphRewrite":  # a result record: its fields are documented, the example is on its producer
            assert ">>>" in doc, f"{name}.{public} has no example"
