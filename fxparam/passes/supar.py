"""SμPar pass: static random masks on hidden block weights, with density-corrected init and LR.

Rules (docs/reference/parameterizations.md, "SμPar"): for a hidden weight of density
rho the effective fan-in is ``rho * d``, so ``m_d`` becomes ``m_d * rho`` in that
weight's init and LR:

- init std ``sigma / sqrt(m_d * rho)``: the width pass's hidden std divided by sqrt(rho);
- Adam LR ``eta / (m_d * rho)``: the width pass's ``lr_mult`` divided by rho;
- SGD LR: ``sgd_lr_mult`` divided by rho as well.  The reference gives only the Adam
  rule; for SGD the change a masked update makes to a row's output,
  ``dW x = eta * delta * sum_j M_ij x_j**2``, sums ``rho * d`` terms, exactly as in the
  Adam argument, so the same 1/rho keeps it density-invariant;
- weight decay and eps: unchanged (the dense rule), as in the reference;
- embeddings, readout, norms, biases: dense and unchanged.

Which weights: every parameter the analysis calls ``hidden`` that lives inside a
residual block (qkv, attention out, MLP in/gate/up/out), except tied aliases (the
owner carries the mask).  Density 1 (the default or an override) means no mask and
the dense plan, exactly.

Without a width pass in the composition (``"supar"`` alone) the pass only masks:
the plan keeps the model's own init (``init="keep"``) and LR, because the std the
model was initialised with is not known to a pure pass, and correcting the LR alone
would leave init and LR inconsistent.  Compose with ``SP(init_std=...)`` to get SP
with the density correction, or with MuP/CompleteP for full SμPar.  ``correct=False``
also masks without correcting: the negative control of the sparse coordinate check
(its activations fall as density drops).
"""

from __future__ import annotations

import math
import re

from fxparam.analysis.facts import Analysis
from fxparam.configs import SuPar
from fxparam.errors import ConfigError
from fxparam.passes._registry import register_pass
from fxparam.plan import MaskPlan, Plan


def maskable(analysis: Analysis) -> list[str]:
    """FQNs SμPar masks: hidden weights inside residual blocks that own their tensor.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> maskable(fxparam.inspect(GPT(GPTConfig(width=64, depth=1))))
        ['blocks.0.attn.qkv.weight', 'blocks.0.attn.proj.weight', 'blocks.0.mlp.fc.weight', 'blocks.0.mlp.proj.weight']
    """
    return [
        name
        for name, info in analysis.params.items()
        if info.role == "hidden" and info.block is not None and not info.tied_to
    ]


def densities(targets: list[str], cfg: SuPar, analysis: Analysis | None = None) -> dict[str, float]:
    """Density of each target: exact-FQN override, else the first matching ``re:`` pattern, else ``cfg.density``.

    Example:
        >>> densities(["b.0.fc.weight", "b.0.qkv.weight"], SuPar(density=0.25, overrides={"re:.*qkv.*": 0.5}))
        {'b.0.fc.weight': 0.25, 'b.0.qkv.weight': 0.5}

    Raises:
        ConfigError: an override key that matches no maskable weight (typos must not be
            silently ignored), naming ``SuPar.overrides`` and the key.
    """
    patterns = [(key, re.compile(key[3:])) for key in cfg.overrides if key.startswith("re:")]
    out: dict[str, float] = {}
    used: set[str] = set()
    for fqn in targets:
        if fqn in cfg.overrides:
            out[fqn] = cfg.overrides[fqn]
            used.add(fqn)
            continue
        for key, pat in patterns:
            if pat.fullmatch(fqn):
                out[fqn] = cfg.overrides[key]
                used.add(key)
                break
        else:
            out[fqn] = cfg.density
    for key in cfg.overrides:
        if key in used:
            continue
        role = ""
        if analysis is not None and key in analysis.params:
            info = analysis.params[key]
            role = f" (it is a {info.role} parameter{' outside the blocks' if info.block is None else ''}"
            role += f", tied to {info.tied_to}" if info.tied_to else ""
            role += ")"
        raise ConfigError(
            f"invalid SuPar config: overrides key {key!r} matches no maskable weight{role}. SμPar masks only "
            f"hidden weights inside residual blocks, e.g. {targets[:4]}; use an exact parameter FQN or "
            "'re:<pattern>' (re.fullmatch against parameter FQNs)."
        )
    return out


@register_pass(SuPar)
def supar_pass(analysis: Analysis, cfg: SuPar, plan: Plan) -> Plan:
    """Refine the width pass's rules for the masked weights and record their masks.

    Example:
        >>> import fxparam
        >>> from fxparam.models import GPT, GPTConfig
        >>> plan = fxparam.plan(GPT(GPTConfig(width=128, depth=1)), "mup+supar", base_width=64, density=0.25)
        >>> p = plan.params["blocks.0.mlp.fc.weight"]
        >>> round(p.init_std, 4), p.lr_mult, p.density  # 0.02 / sqrt(2 * 0.25), 1 / (2 * 0.25)
        (0.0283, 2.0, 0.25)
    """
    targets = maskable(analysis)
    if not targets:
        if cfg.overrides:
            densities(targets, cfg, analysis)  # raises on the first override
        plan.notes.append("SuPar: no hidden weights inside residual blocks: nothing to mask")
        return plan
    rho_of = densities(targets, cfg, analysis)
    width_rules = plan.base_width is not None or "SP" in plan.passes
    correct = cfg.correct and width_rules
    masked = 0
    for fqn, rho in rho_of.items():
        if rho == 1.0:
            continue  # dense: no mask, the width pass's rules exactly
        p = plan.params[fqn]
        update: dict[str, float | None] = {"density": rho}
        if correct:
            update["lr_mult"] = p.lr_mult / rho
            update["sgd_lr_mult"] = p.sgd_lr_mult / rho
            if p.init_std is not None:
                update["init_std"] = p.init_std / math.sqrt(rho)
        plan.params[fqn] = p.model_copy(update=update)
        plan.masks[fqn] = MaskPlan(density=rho, seed=cfg.seed, store=cfg.store_masks)
        masked += 1
    if masked:
        values = sorted(set(plan.masks[f].density for f in plan.masks))
        shown = ", ".join(f"{v:.4g}" for v in values)
        how = (
            "init std / sqrt(rho), LR / rho"
            if correct
            else "no density correction (correct=False)"
            if width_rules
            else "masks only: no width parameterization to correct (compose with sp/mup/completep)"
        )
        plan.notes.append(
            f"SuPar: {masked} of {len(targets)} hidden weights masked (density {shown}, seed {cfg.seed}"
            f"{', stored in state_dict' if cfg.store_masks else ''}); {how}"
        )
    return plan
