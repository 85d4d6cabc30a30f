"""One error hierarchy, so users can catch everything fxparam raises with one clause.

Every message says what was wrong, where (module / parameter FQN), and what to do.
"""

from __future__ import annotations


class FxparamError(Exception):
    """Base class of every error fxparam raises on purpose."""


class ConfigError(FxparamError, ValueError):
    """A configuration value is invalid (bad alpha, width <= 0, unknown name...)."""


class CaptureError(FxparamError):
    """The model could not be captured as a graph."""


class AnalysisError(FxparamError):
    """The captured graph does not have the structure a pass needs (e.g. no width)."""


class PlanError(FxparamError):
    """A pass could not build a plan, or a plan does not match the model."""


class LoweringError(FxparamError):
    """A plan could not be applied to the model; the model is left unchanged."""


class AlreadyTransformedError(LoweringError):
    """The model already carries an fxparam plan; transforming again would double-scale."""


class OptimizerError(FxparamError):
    """The optimizer or its parameter groups do not match the plan."""


class KernelError(FxparamError, ValueError):
    """Bad shapes, dtypes or devices handed to an fxparam kernel."""


class RecipeError(FxparamError, ValueError):
    """Bad inputs to a hyperparameter recipe or schedule."""


class GNSError(FxparamError):
    """Misuse of the gradient-noise-scale monitor."""


__all__ = [
    "AlreadyTransformedError",
    "AnalysisError",
    "CaptureError",
    "ConfigError",
    "FxparamError",
    "GNSError",
    "KernelError",
    "LoweringError",
    "OptimizerError",
    "PlanError",
    "RecipeError",
]
