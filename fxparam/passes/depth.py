"""Depth-scaled residual branches on their own: branch outputs times 1/m_L**alpha."""

from __future__ import annotations

from fxparam.analysis.facts import Analysis
from fxparam.configs import DepthScaled
from fxparam.passes._registry import register_pass
from fxparam.plan import Plan


@register_pass(DepthScaled)
def depth_scaled_pass(analysis: Analysis, cfg: DepthScaled, plan: Plan) -> Plan:
    if analysis.depth == 0:
        plan.notes.append("DepthScaled: no residual blocks found: nothing to scale")
        return plan
    m_L = analysis.depth / cfg.base_depth
    plan.m_L, plan.base_depth, plan.alpha = m_L, cfg.base_depth, cfg.alpha
    for site in analysis.residuals:
        for module in site.output_modules:
            plan.multiply(module, 1.0 / m_L**cfg.alpha)
    return plan
