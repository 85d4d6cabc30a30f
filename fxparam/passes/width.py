"""Width (and depth) parameterizations: SP, muP and CompleteP.

The rules are the Adam table of docs/reference/parameterizations.md, implemented
exactly; the SGD column follows Tensor Programs V, Table 8 (a vector with no width
dimension, e.g. a readout bias, keeps LR eta under SGD).  Where the table is silent:
the readout's Adam eps is eps/m_d like the embedding's (CompleteP reference code,
EleutherAI/nanoGPT-mup ``completep``), its weight decay is the base one (microsoft/mup),
the readout multiplier scales the readout's *input* (so a readout bias is not shrunk
with width, as in ``MuReadout``), and matmul biases are initialised to zero (table:
init 0) instead of PyTorch's default U(+-1/sqrt(fan_in)), which shrinks with width.
"""

from __future__ import annotations

import math
import warnings

from fxparam.analysis.facts import Analysis
from fxparam.analysis.rebuild import power_of
from fxparam.configs import SP, CompleteP, MuP
from fxparam.errors import AnalysisError
from fxparam.passes._registry import register_pass
from fxparam.plan import LEGACY_INPUT_PREFIX, AttentionPlan, ParamPlan, Plan

#: 0.1 key prefix of a readout-input multiplier; ``Plan.multiply`` still reads it (typed tables since plan v2).
INPUT = LEGACY_INPUT_PREFIX


@register_pass(SP)
def sp_pass(analysis: Analysis, cfg: SP, plan: Plan) -> Plan:
    """One init std for every matrix, no multipliers, one LR; vectors are not decayed."""
    for name, info in analysis.params.items():
        if info.tied_to:
            plan.params[name] = ParamPlan(role=info.role, tied_to=info.tied_to)
            continue
        if info.role == "frozen":  # user override: left as it is, never updated
            plan.params[name] = ParamPlan(role="frozen", init="keep", lr_mult=0.0, sgd_lr_mult=0.0, wd_mult=0.0)
        elif info.role == "vector":
            plan.params[name] = ParamPlan(role="vector", init="keep", wd_mult=0.0)
        else:
            plan.params[name] = ParamPlan(role=info.role, init="normal", init_std=cfg.init_std)
    plan.notes.extend(n for n in analysis.notes if n not in plan.notes)
    plan.notes.append(f"SP: every weight ~ N(0, {cfg.init_std}^2), one LR for all groups")
    return plan


def _require_width(analysis: Analysis, cfg: MuP) -> float:
    has_width = any(p.fan_in_width or (p.fan_out_width and p.role != "vector") for p in analysis.params.values())
    if analysis.width is None or not has_width:
        raise AnalysisError(
            f"{type(cfg).__name__}: the width of {analysis.model_class} cannot be determined: no matmul has "
            "a dimension that grows with width (a single layer, or no matmuls). Width parameterizations "
            "need at least one hidden dimension; use 'sp' for this model."
        )
    return analysis.width / cfg.base_width


def _mup_style_constants(analysis: Analysis, cfg: MuP, plan: Plan, m_d: float) -> None:
    """A constant on a readout's / embedding's input or output equal to m_d^k (no second build): muP-style
    code already in the forward (``logits * d_base / d``, mup's ``output_mult / width_mult()``). muP adds its
    own alpha_out/m_d there, so the model would get the width factor twice: warn, naming rebuild=."""
    if abs(m_d - 1.0) < 1e-12:
        return
    ends = {i.module for i in analysis.params.values() if i.role in ("readout", "embedding")}
    ends |= {i.multiplier_at.removeprefix(INPUT) for i in analysis.params.values() if i.multiplier_at}
    seen: set[tuple[str, float]] = set()
    for c in analysis.forward_constants:
        if c.scales not in ends or (c.module, c.value) in seen:
            continue
        k = power_of(c.value, m_d)
        if k is None:
            continue
        seen.add((c.module, c.value))
        msg = (f"{type(cfg).__name__}: constant x{c.value:.4g} on the {c.on} of {c.scales!r} equals m_d^{k:g} "
               f"(m_d = {analysis.width}/{cfg.base_width}): if it is muP-style code already in the forward "
               "(logits * d_base/d, mup's output_mult/width_mult), muP's own multiplier there counts the width "
               "twice. Pass rebuild=make(width) (a second build confirms it changes with width and fxparam divides "
               "it out), or remove it; if it is a fixed constant, ignore this warning")
        plan.notes.append(msg)
        warnings.warn(msg, stacklevel=4)


def _readout_multiplier(analysis: Analysis, cfg: MuP, plan: Plan, name: str, info, factor: float) -> None:
    """alpha_out/m_d where the analysis placed it, else on the input of the readout's module -- never on the
    input of the model or of a residual block (a raw router Parameter inside an MoE block): that input is the
    residual stream, skip included.  There the multiplier is left out and a note says so (the analysis
    already warned, naming the fix)."""
    if info.multiplier_at:
        plan.multiply(info.multiplier_at, factor)
    elif info.module == "" or info.module in analysis.blocks:
        plan.notes.append(
            f"{type(cfg).__name__}: readout multiplier alpha_out/m_d = {factor:.4g} NOT applied to {name!r}: no "
            f"module's input or output is its input alone ({info.module or 'the root'!r} also computes the rest "
            "of the model); compute it in an nn.Linear, or pass roles={name: 'vector'} to keep SP rules knowingly"
        )
    else:
        plan.multiply(INPUT + info.module, factor)


def _embedding_multiplier(analysis: Analysis, cfg: MuP, plan: Plan, name: str, info, skipped: list[str]) -> None:
    """alpha_in (Tensor Programs V Table 3, input weights' forward multiplier) on the output of ``info.module``.

    Only for input weights whose output is the width and that sit outside the residual blocks: a
    factorised input ``Embedding(V, 16) -> Linear(16, d)`` gets alpha_in once (on the projection), and
    a depthwise conv inside every block (fixed fan-in k*k, input-weight rules) is not multiplied by it.

    Raises:
        AnalysisError: the weight is a raw Parameter whose module computes more than its lookup (the
            model's root, or a module holding other parameters): a multiplier on that module's output
            would scale everything it computes, not the embedding alone.
    """
    if not info.fan_out_width or info.block is not None:
        skipped.append(name)
        return
    others = [n for n, i in analysis.params.items()  # its own bias is part of the input layer's output
              if n != name and i.module == info.module and not i.tied_to and i.role != "frozen"
              and n != (f"{info.module}.bias" if info.module else "bias")]
    if info.module == "" or others:
        where = "the model's root module" if info.module == "" else f"module {info.module!r}, which also holds {others[0]!r}"
        raise AnalysisError(
            f"{type(cfg).__name__}: embedding_multiplier = {cfg.embedding_multiplier:g} cannot be put on input weight "
            f"{name!r}: it is a Parameter of {where}, so no module's output is its lookup alone (a multiplier there "
            f"would scale everything that module computes). Hold it in an nn.Embedding (or a small module that "
            "returns the lookup / the table), or use embedding_multiplier=1."
        )
    plan.multiply(info.module, cfg.embedding_multiplier)


@register_pass(MuP)
def mup_pass(analysis: Analysis, cfg: MuP, plan: Plan) -> Plan:
    """muP (and CompleteP, which adds the depth factors with exponent alpha)."""
    m_d = _require_width(analysis, cfg)
    depth_rules = isinstance(cfg, CompleteP)
    alpha = cfg.alpha if depth_rules else 1.0
    m_L = 1.0
    if depth_rules:
        if analysis.depth == 0:
            plan.notes.append("CompleteP: no residual blocks found (depth 0): depth rules not applied")
        else:
            m_L = analysis.depth / cfg.base_depth
        plan.base_depth, plan.alpha = cfg.base_depth, alpha
    plan.base_width, plan.m_d, plan.m_L = cfg.base_width, m_d, m_L
    plan.notes.extend(n for n in analysis.notes if n not in plan.notes)
    for wc in analysis.width_constants:  # x sqrt(d) on an embedding inside forward: divided out (issue 13)
        if wc.scales:
            plan.multiply(wc.scales, m_d**-wc.exponent, on=wc.on)
    depth_lr = m_L ** (alpha - 1.0)  # CompleteP: hidden and in-block vector LR factor
    # SGD: a block's gradient carries the branch multiplier m_L^-alpha that Adam normalises away, so keeping
    # each block's update at Theta(1/L) needs m_L^(alpha-1) / m_L^-alpha = m_L^(2 alpha - 1): eta at
    # alpha = 1/2, as Depth-muP for SGD (Tensor Programs VI); eta * m_L at alpha = 1.
    sgd_depth_lr = m_L ** (2.0 * alpha - 1.0)
    depth_eps = m_L**alpha
    sigma = cfg.init_std
    readout_modules = {i.module for i in analysis.params.values() if i.role == "readout"}
    skipped_alpha_in: list[str] = []

    for name, info in analysis.params.items():
        if info.tied_to:  # the shared tensor follows its owner's rules (embedding)
            plan.params[name] = ParamPlan(role=info.role, tied_to=info.tied_to)
            if info.role == "readout":
                _readout_multiplier(analysis, cfg, plan, name, info, cfg.output_multiplier / m_d)
            continue
        in_block = info.block is not None
        if info.role == "frozen":  # user override: left as it is, never updated
            plan.params[name] = ParamPlan(role="frozen", init="keep", lr_mult=0.0, sgd_lr_mult=0.0, wd_mult=0.0)
            continue
        if info.role == "embedding":
            # inside a residual block (a depthwise conv: fixed fan-in k) the block's depth factors apply as to
            # every in-block parameter (CompleteP: Adam LR x m_L^(alpha-1), eps / m_L^alpha)
            plan.params[name] = ParamPlan(
                role="embedding", init="normal", init_std=sigma,
                lr_mult=depth_lr if in_block else 1.0,
                eps_mult=1 / (m_d * (depth_eps if in_block else 1.0)),
                sgd_lr_mult=m_d * (sgd_depth_lr if in_block else 1.0),
            )
            if cfg.embedding_multiplier != 1.0:
                _embedding_multiplier(analysis, cfg, plan, name, info, skipped_alpha_in)
            if info.multiplier_at:  # the same table read out functionally: F.linear(h, wte.weight)
                plan.multiply(info.multiplier_at, cfg.output_multiplier / m_d)
        elif info.role == "hidden":
            plan.params[name] = ParamPlan(
                role="hidden",
                init="normal",
                init_std=sigma / math.sqrt(m_d),
                lr_mult=depth_lr / m_d,
                sgd_lr_mult=sgd_depth_lr,
                wd_mult=m_d,
                eps_mult=1 / (m_d * depth_eps),
            )
        elif info.role == "readout":
            plan.params[name] = ParamPlan(
                role="readout",
                init="zeros" if cfg.zero_readout else "normal",
                init_std=None if cfg.zero_readout else sigma,
                sgd_lr_mult=m_d,
                eps_mult=1 / m_d,  # as the embedding (CompleteP reference code)
            )
            _readout_multiplier(analysis, cfg, plan, name, info, cfg.output_multiplier / m_d)
        else:  # vectors: biases, norm gains
            is_bias = name.rsplit(".", 1)[-1] == "bias"  # table init 0 (norm gains keep their 1)
            has_width = info.fan_out_width and info.module not in readout_modules  # a readout bias has none
            plan.params[name] = ParamPlan(
                role="vector",
                init="zeros" if is_bias else "keep",
                wd_mult=0.0,
                lr_mult=depth_lr if in_block else 1.0,
                # SGD: eta * m_d for a width-sized vector; eta for one with no width dim (readout bias)
                sgd_lr_mult=(m_d if has_width else 1.0) * (sgd_depth_lr if in_block else 1.0),
                eps_mult=1 / (m_d * (depth_eps if in_block else 1.0)),
            )

    _mup_style_constants(analysis, cfg, plan, m_d)
    if skipped_alpha_in:
        plan.notes.append(
            f"{type(cfg).__name__}: embedding_multiplier alpha_in = {cfg.embedding_multiplier:g} multiplies the "
            "model's input weights whose output is the width (token / patch / position embeddings, a factorised "
            f"input's projection); not {', '.join(skipped_alpha_in[:4])}"
            + (f" and {len(skipped_alpha_in) - 4} more" if len(skipped_alpha_in) > 4 else "")
            + " (no width output: a factorised input's table; or inside a residual block: a depthwise conv), "
            "which keep input-weight init/LR rules with multiplier 1"
        )
    if depth_rules and analysis.depth:
        from fxparam.passes.depth import scale_branches

        scale_branches(analysis, plan, cfg.base_depth, alpha, type(cfg).__name__)

    if cfg.attention == "mup":
        head_dims_grown: dict[tuple[int, int], float] = {}
        for site in analysis.attention:
            if site.scale is None:  # a softmax over q.k whose scale was not found: loud, never silent
                msg = (
                    f"{type(cfg).__name__}: attention in {site.module!r} (softmax over q.k) keeps its logit "
                    "scale where fxparam cannot find it, so the muP attention rule is NOT applied there. "
                    "Pass attention='sp' to accept that, or keep the scale in a float attribute of the "
                    "module (`scaling`) that its forward uses."
                )
                plan.notes.append(msg)
                warnings.warn(msg, stacklevel=3)
                continue
            grown = site.wide_head_dim is not None and site.wide_head_dim > site.head_dim > 0
            # a second build (twice the width) saw the head dim grow like width^k (heads fixed: k = 1):
            # d_head_base = d_head / m_d^k
            k = math.log2(site.wide_head_dim / site.head_dim) if grown else 0.0  # type: ignore[operator]
            base_head_dim = cfg.base_head_dim or site.head_dim / m_d**k
            if grown and not cfg.base_head_dim:
                head_dims_grown.setdefault((site.head_dim, site.wide_head_dim), base_head_dim)  # type: ignore[arg-type]
            a_attn = cfg.attn_multiplier if cfg.attn_multiplier is not None else math.sqrt(base_head_dim)
            # muP logit scale a_attn/d_head against SP's 1/sqrt(d_head), applied as a RATIO to the
            # model's own scale: per-layer factors (GPT-2's 1/layer, T5's 1.0) survive, and at the
            # base head dim the ratio is 1 (the transformed model equals the original).
            if cfg.attn_multiplier is None:  # sqrt(d_base)/d over 1/sqrt(d): exactly 1 at the base head dim
                # the model's own scale goes like d_head^e (SP: e = -1/2); muP's alpha/d_head, alpha set so the
                # base model is unchanged, is its scale times (d_base/d_head)^(e+1). A second build where the
                # head dim grows measures e: a model already at 1/d_head (e = -1) is left as it is
                e = -0.5
                if grown and site.wide_scale and site.scale:
                    e = math.log(site.wide_scale / site.scale) / math.log(site.wide_head_dim / site.head_dim)  # type: ignore[operator]
                ratio = (base_head_dim / site.head_dim) ** (e + 1.0)
            else:
                ratio = a_attn / math.sqrt(site.head_dim)
            plan.attention[site.module] = AttentionPlan(
                scale=site.scale * ratio,
                previous=site.scale,
                head_dim=site.head_dim,
                attr=site.scale_attr,
                attr_module=site.scale_attr_module,
                kind=site.kind,
            )
        for (d_head, wide), d_base in head_dims_grown.items():
            plan.notes.append(
                f"attention: the head dim grows with width (second build: {d_head} at width {analysis.width}, "
                f"{wide} at width {2 * (analysis.width or 0)}): d_head_base = {d_base:.4g} at the base width, logit "
                "scale sqrt(d_head_base)/d_head (Tensor Programs V: 1/d_head); pass base_head_dim= to choose another"
            )
        if analysis.attention and cfg.base_head_dim is None and cfg.attn_multiplier is None and not head_dims_grown:
            plan.notes.append(
                "attention: logit scale sqrt(d_head_base)/d_head with d_head_base = the model's head dim "
                "(heads grow with width); pass base_head_dim= if the head dim grows instead. Applied as "
                "the ratio to 1/sqrt(d_head) times each layer's own scale"
            )
    plan.notes.append(
        f"{type(cfg).__name__}: m_d = {analysis.width}/{cfg.base_width} = {m_d:.4g}"
        + (f", m_L = {analysis.depth}/{cfg.base_depth} = {m_L:.4g}, alpha = {alpha}" if depth_rules else "")
    )
    return plan
