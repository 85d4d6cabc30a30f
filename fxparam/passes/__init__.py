"""Parameterization passes: pure functions (Analysis, config, Plan) -> Plan, registered by config type.

A new parameterization is one config class, one pass function and one test file.
"""

from fxparam.passes._registry import build_plan, identity_plan, register_pass

# Importing the pass modules registers them.
from fxparam.passes import depth, norms, supar, width  # noqa: E402,F401  isort: skip

__all__ = ["build_plan", "identity_plan", "register_pass"]
