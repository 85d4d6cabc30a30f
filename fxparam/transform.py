"""0.1 home of the front door; the verbs live in :mod:`fxparam.api` (re-exported here)."""

from fxparam.api import apply_plan, plan, transform

__all__ = ["apply_plan", "plan", "transform"]
