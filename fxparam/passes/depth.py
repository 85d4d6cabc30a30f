"""Depth-scaled residual branches: each branch's contribution times 1/m_L**alpha.

Shared by CompleteP (``fxparam.passes.width``) and :class:`~fxparam.configs.DepthScaled`.
The multiplier sits on the module whose output *is* the branch's contribution (after any
in-block factor such as ``0.5 * attn(x)`` or a LayerScale gain), never on a module whose
output includes the skip, and it is set once per module: a block module applied n times
gets its factor on every call, not n times compounded.  Each residual stream has its own
depth (an encoder-decoder's encoder and decoder stacks), so its own ``m_L``.
"""

from __future__ import annotations

import warnings

from fxparam.analysis.facts import Analysis
from fxparam.analysis.rebuild import power_of
from fxparam.configs import DepthScaled
from fxparam.errors import AnalysisError
from fxparam.passes._registry import register_pass
from fxparam.plan import Plan


def scale_branches(analysis: Analysis, plan: Plan, base_depth: int, alpha: float, who: str) -> float:
    """Put ``1 / m_L**alpha`` on every residual branch of ``analysis`` (CompleteP Table: residual branch).

    Args:
        analysis: the model's structure; ``analysis.stream_depths`` gives each stream's depth.
        plan: the plan to add the multipliers to (``plan.multiply``).
        base_depth: L_base, the depth of the tuned base model.
        alpha: the depth exponent (1 CompleteP, 0.5 depth-muP).
        who: the config's name, for messages.

    Returns:
        ``m_L = depth / base_depth`` of the deepest stream (``Plan.m_L``).

    Raises:
        AnalysisError: a residual branch has no module whose output is the branch alone
            (computed inline by the module that adds it, or its last module is also called
            outside every branch: ``ResidualSite.unscalable``), or one module is the branch output
            of two streams with different depths; the message names the block and the fix.
    """
    depths = analysis.stream_depths or [analysis.depth]
    factors: dict[str, float] = {}
    _warn_own_depth_factors(analysis, plan, depths, who)
    for site in analysis.residuals:
        if not site.output_modules:
            why = site.unscalable or "the branch is computed inline by the module that adds it"
            raise AnalysisError(
                f"{who}: the residual branch added in {site.block!r} has no module whose output is the branch "
                f"alone ({why}), so the depth multiplier cannot be put on the branch without also scaling "
                "something else (the skip, or another call). Give the branch's last op a submodule of its own "
                "(e.g. an nn.Linear or a small nn.Module), or use a width-only config ('mup')."
            )
        m_L = depths[site.stream] / base_depth if site.stream < len(depths) else analysis.depth / base_depth
        factor = 1.0 / m_L**alpha
        for module in site.output_modules:
            if module in factors and abs(factors[module] - factor) > 1e-12 * factor:
                raise AnalysisError(
                    f"{who}: module {module!r} is the branch output of residual streams of different depths "
                    f"(multipliers {factors[module]:.4g} and {factor:.4g}); give each stream its own module."
                )
            factors[module] = factor
    for module, factor in factors.items():
        plan.multiply(module, factor)
    if len(set(depths)) > 1:
        msg = (
            f"{who}: residual streams of different depths {depths} (e.g. encoder and decoder): each "
            "stream's branches get 1/m_L^alpha with its own m_L; per-parameter LR/eps depth factors use "
            f"the deepest stream's m_L = {max(depths)}/{base_depth}"
        )
        plan.notes.append(msg)
        warnings.warn(msg, stacklevel=3)
    shared = [r.block for r in analysis.residuals if r.application > 0]
    if shared:
        plan.notes.append(
            f"{who}: block {shared[0]!r} is applied {1 + max(r.application for r in analysis.residuals)} times "
            "(shared weights): each application is one residual block of the depth, and its branch "
            "multiplier applies once per call"
        )
    return max(depths) / base_depth


@register_pass(DepthScaled)
def depth_scaled_pass(analysis: Analysis, cfg: DepthScaled, plan: Plan) -> Plan:
    """Residual branches times ``1/m_L**alpha`` on their own (no width rules)."""
    if analysis.depth == 0:
        plan.notes.append("DepthScaled: no residual blocks found: nothing to scale")
        return plan
    plan.m_L = scale_branches(analysis, plan, cfg.base_depth, cfg.alpha, "DepthScaled")
    plan.base_depth, plan.alpha = cfg.base_depth, cfg.alpha
    return plan


def _own_depth_rule(factor: float, depth: int) -> str | None:
    """The depth rule ``factor`` equals at ``depth`` (1/sqrt(L), 1/sqrt(2L), 1/L, 1/(2L)), if any."""
    if depth < 3:  # 0.5 = 1/L = 1/sqrt(2L) at L = 2: a branch's fixed 0.5 would always match
        return None
    for n, label in ((1, "L"), (2, "2L")):
        k = power_of(factor, n * depth, (-0.5, -1.0))
        if k is not None:
            return (f"1/sqrt({label})" if k == -0.5 else f"1/{label}") + f" at L = {depth}"
    return None


def _warn_own_depth_factors(analysis: Analysis, plan: Plan, depths: list[int], who: str) -> None:
    """A branch the model already scales like a depth rule: the config's 1/m_L^alpha comes on top.

    Nothing else tells a model's own ``proj(y) / sqrt(2 * n_layer)`` (GPT-2-style, depth-muP code
    ported by hand) from a fixed constant on one capture; the value is the evidence, and the
    message says what to do either way.
    """
    seen: set[tuple[float, int]] = set()
    for site in analysis.residuals:
        depth = depths[site.stream] if site.stream < len(depths) else analysis.depth
        rule = _own_depth_rule(site.own_factor, depth)
        if rule is None or (site.own_factor, depth) in seen:
            continue
        seen.add((site.own_factor, depth))
        msg = (f"{who}: the residual branch of {site.block!r} (and others like it) is multiplied by "
               f"{site.own_factor:.4g} in the model's forward, which equals {rule}: if that is the model's own depth "
               f"scaling, {who} scales the branch a second time (1/m_L^alpha on top); remove it from forward (or "
               "make it a fixed constant) before transforming. If it is a fixed constant, ignore this warning.")
        plan.notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=4)
