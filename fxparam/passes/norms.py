"""GNS norm-swap pass: mark every norm the analysis found for the fused per-example version."""

from __future__ import annotations

from fxparam.analysis.facts import Analysis
from fxparam.configs import GNS
from fxparam.passes._registry import register_pass
from fxparam.plan import Plan


@register_pass(GNS)
def gns_pass(analysis: Analysis, cfg: GNS, plan: Plan) -> Plan:
    plan.norm_swaps = [n.module for n in analysis.norms]
    if not plan.norm_swaps:
        plan.notes.append("GNS: no LayerNorm/RMSNorm found: nothing to track")
    return plan
