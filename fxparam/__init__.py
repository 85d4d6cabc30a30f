"""fxparam: make any PyTorch model train well at any size."""

from fxparam.errors import (
    AlreadyTransformedError,
    AnalysisError,
    CaptureError,
    ConfigError,
    FxparamError,
    LoweringError,
    OptimizerError,
    PlanError,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyTransformedError",
    "AnalysisError",
    "CaptureError",
    "ConfigError",
    "FxparamError",
    "LoweringError",
    "OptimizerError",
    "PlanError",
    "__version__",
]
