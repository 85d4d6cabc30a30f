"""fxparam: make any PyTorch model train well at any size.

The package root is lazy (PEP 562): ``import fxparam`` loads only the errors and the version,
so ``fxparam --help`` does not pay for torch; each public name imports its module on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from fxparam import _moved  # noqa: F401  (old module paths keep importing)
from fxparam._version import __version__
from fxparam.errors import (
    AlreadyTransformedError,
    AnalysisError,
    CaptureError,
    ConfigError,
    FxparamError,
    GNSError,
    KernelError,
    LoweringError,
    OptimizerError,
    PlanError,
    RecipeError,
)

# public name -> the module that defines it
_NAMES: dict[str, str] = {
    **dict.fromkeys(["Analysis", "AttentionSite", "NormSite", "ParamInfo", "ResidualSite"], "fxparam.analysis"),
    **dict.fromkeys(["apply_plan", "compile", "inspect", "plan", "transform"], "fxparam.api"),
    **dict.fromkeys(["CoordCheck", "coord_check"], "fxparam.checks.coord"),
    **dict.fromkeys(["GNS", "SP", "CompleteP", "Composed", "DepthScaled", "MuP", "SuPar", "compose"], "fxparam.configs"),
    **dict.fromkeys(["backend", "compile_pass"], "fxparam.lowering.compile"),
    **dict.fromkeys(["optimizer", "param_groups"], "fxparam.optim"),
    **dict.fromkeys(["Plan", "plan_of"], "fxparam.plan"),
    **dict.fromkeys(["VerifyReport", "verify"], "fxparam.lowering.verify"),
    **dict.fromkeys(["from_pretrained", "init_weights", "load", "save"], "fxparam.checkpoint"),
    "fold": "fxparam.lowering.fold",
}
# sub-packages reachable as attributes (``fxparam.schedules.d2z(...)``)
_MODULES: dict[str, str] = {
    "gns": "fxparam.gns",
    "recipes": "fxparam.recipes",
    "schedules": "fxparam.recipes.schedules",
    "schedulers": "fxparam.schedulers",
    "integrations": "fxparam.integrations",
    "testing": "fxparam.testing",
    # the pipeline's own packages, attributes of the package as they were when the root was eager
    **{m: f"fxparam.{m}" for m in ["analysis", "api", "capture", "checks", "configs", "kernels", "lowering",
                                   "models", "optim", "passes"]},
}
# front-door functions that share their name with a module of this package
_FUNCTIONS_OVER_MODULES = {"plan", "transform"}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'fxparam' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_MODULES))


class _Package(types.ModuleType):
    """Importing the module ``fxparam.plan`` (or ``fxparam.transform``) binds it on the package;
    the public ``fxparam.plan`` / ``fxparam.transform`` stay the front-door functions."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AlreadyTransformedError",
    "Analysis",
    "AnalysisError",
    "AttentionSite",
    "CaptureError",
    "CompleteP",
    "Composed",
    "ConfigError",
    "CoordCheck",
    "DepthScaled",
    "FxparamError",
    "GNS",
    "GNSError",
    "KernelError",
    "LoweringError",
    "MuP",
    "NormSite",
    "OptimizerError",
    "ParamInfo",
    "Plan",
    "PlanError",
    "RecipeError",
    "ResidualSite",
    "SP",
    "SuPar",
    "VerifyReport",
    "__version__",
    "apply_plan",
    "backend",
    "compile",
    "compile_pass",
    "compose",
    "coord_check",
    "fold",
    "from_pretrained",
    "gns",
    "init_weights",
    "inspect",
    "load",
    "optimizer",
    "param_groups",
    "plan",
    "plan_of",
    "recipes",
    "save",
    "schedules",
    "transform",
    "verify",
]
