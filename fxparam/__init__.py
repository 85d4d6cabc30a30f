"""fxparam: make any PyTorch model train well at any size."""

from fxparam import transform as _transform_module  # noqa: F401  (loaded before the function is bound: see below)
from fxparam._version import __version__
from fxparam.analysis import Analysis, AttentionSite, NormSite, ParamInfo, ResidualSite
from fxparam.api import apply_plan, compile, inspect, plan, transform  # noqa: A004 - fxparam.compile, like torch.compile
from fxparam.checks.coord import CoordCheck, coord_check
from fxparam.configs import GNS, SP, CompleteP, Composed, DepthScaled, MuP, SuPar, compose
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
from fxparam.lowering.compile import backend, compile_pass
from fxparam.optim import optimizer, param_groups
from fxparam.plan import Plan, plan_of
from fxparam.lowering.verify import VerifyReport, verify
from fxparam.checkpoint import from_pretrained, init_weights, load, save
from fxparam.lowering.fold import fold

from fxparam import gns, recipes  # noqa: E402  isort: skip  (sub-packages as namespaces)
from fxparam.recipes import schedules  # noqa: E402  isort: skip  (public as fxparam.schedules)
from fxparam import _moved  # noqa: E402,F401  isort: skip  (old module paths keep importing)

# ``fxparam.transform`` and ``fxparam.plan`` are the front-door functions; the modules of the
# same name are loaded above, before the functions are bound, so importing them later does
# not rebind the package attributes to the modules.

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
