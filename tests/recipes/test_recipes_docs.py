"""The docstring examples run, public names are documented, __all__ is sorted."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import fxparam.recipes as recipes

MODULES = [
    "fxparam.recipes.schedules",
    "fxparam.models.alibi",
    "fxparam.recipes",
    "fxparam.recipes._collapse",
    "fxparam.recipes._constants",
    "fxparam.recipes._ema",
    "fxparam.recipes._fit",
    "fxparam.recipes._recommend",
    "fxparam.recipes._timescale",
    "fxparam.recipes._trec",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_all_is_sorted_and_public_functions_have_examples() -> None:
    for mod in (
        recipes,
        importlib.import_module("fxparam.recipes.schedules"),
        importlib.import_module("fxparam.models.alibi"),
    ):
        assert list(mod.__all__) == sorted(mod.__all__), mod.__name__
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                assert obj.__doc__, f"{mod.__name__}.{name} has no docstring"
            if inspect.isfunction(obj):
                assert "Example" in obj.__doc__, f"{mod.__name__}.{name} has no example"
