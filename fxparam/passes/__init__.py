"""Parameterization passes: pure functions (Analysis, config, Plan) -> Plan, registered by config type.

A new parameterization is one config class, one pass function and one test file
(``docs/internals.md``, "A new parameterization").  Every public module of this package is
imported here, and importing a pass module registers its passes: a new built-in pass
module needs no edit of this file.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from fxparam.passes._registry import build_plan, identity_plan, register_pass, unregister_pass

for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["build_plan", "identity_plan", "register_pass", "unregister_pass"]
