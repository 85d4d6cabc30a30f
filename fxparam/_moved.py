"""Old module paths of the 0.1 layout, kept importable.

The consumers of the pipeline moved out of the top level in 0.2 (``fxparam.coord`` ->
``fxparam.checks.coord``, ``fxparam.hf`` -> ``fxparam.models.hf``, ...). An import of an old
path returns the new module itself (one module object, so monkeypatching either name works)
and, except for the still-public ``fxparam.schedules``, warns with the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "fxparam.coord": "fxparam.checks.coord",
    "fxparam.coord_plot": "fxparam.checks.coord_plot",
    "fxparam.transfer": "fxparam.checks.transfer",
    "fxparam.data": "fxparam.checks.data",
    "fxparam.targets": "fxparam.checks.targets",
    "fxparam.hf": "fxparam.models.hf",
    "fxparam.alibi": "fxparam.models.alibi",
    "fxparam.schedules": "fxparam.recipes.schedules",
    "fxparam.gns._swap": "fxparam.lowering.norm_swap",
}
_SILENT = {"fxparam.schedules"}  # public: fxparam.schedules.d2z(...) is the documented spelling


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if spec.name not in _SILENT:
            warnings.warn(
                f"{spec.name} moved to {MOVED[spec.name]}; import it from there (the old path goes in 0.3)",
                DeprecationWarning,
                stacklevel=2,  # importlib._bootstrap frames are skipped: the user's import line
            )
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:  # the new module is already executed
        return None


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())
