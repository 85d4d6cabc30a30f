"""fxparam: make any PyTorch model train well at any size."""

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

from fxparam.analysis import Analysis, AttentionSite, NormSite, ParamInfo, ResidualSite
from fxparam.checks.coord import CoordCheck, coord_check
from fxparam.configs import GNS, SP, CompleteP, Composed, DepthScaled, MuP, SuPar, compose
from fxparam.optim import optimizer, param_groups
from fxparam.plan import Plan, plan_of
from fxparam.transform import apply_plan, plan, transform
from fxparam.lowering.compile import backend, compile, compile_pass  # noqa: A004 - fxparam.compile, like torch.compile

from fxparam import gns, recipes  # noqa: E402  isort: skip  (sub-packages as namespaces)
from fxparam.recipes import schedules  # noqa: E402  isort: skip  (public as fxparam.schedules)
from fxparam import _moved  # noqa: E402,F401  isort: skip  (old module paths keep importing)

__version__ = "0.1.0"


def inspect(model, example_inputs=None) -> Analysis:
    """Analyse ``model``'s structure without modifying it.

    Captures a meta-device skeleton (no memory, cost independent of width), then finds
    residual blocks, parameter roles and width dimensions, attention sites, norms and
    tied weights.

    Args:
        model: any ``torch.nn.Module``.
        example_inputs: a tensor, tuple, dict of kwargs or ``(args, kwargs)``; optional
            for ``fxparam.models.GPT`` and Hugging Face models (``config.vocab_size``).

    Example:
        >>> from fxparam.models import GPT, GPTConfig
        >>> fxparam.inspect(GPT(GPTConfig(width=64, depth=2))).depth
        2
    """
    from fxparam.analysis import analyse

    return analyse(model, example_inputs)


__all__ = [
    "GNS",
    "SP",
    "AlreadyTransformedError",
    "Analysis",
    "AttentionSite",
    "CompleteP",
    "Composed",
    "CoordCheck",
    "DepthScaled",
    "MuP",
    "Plan",
    "SuPar",
    "AnalysisError",
    "CaptureError",
    "ConfigError",
    "FxparamError",
    "GNSError",
    "KernelError",
    "LoweringError",
    "NormSite",
    "OptimizerError",
    "ParamInfo",
    "PlanError",
    "RecipeError",
    "ResidualSite",
    "__version__",
    "apply_plan",
    "backend",
    "compile",
    "compile_pass",
    "compose",
    "coord_check",
    "gns",
    "inspect",
    "optimizer",
    "param_groups",
    "plan",
    "plan_of",
    "recipes",
    "schedules",
    "transform",
]
