"""The Plan: everything a transform does to a model, keyed by FQN, as diffable JSON.

Facts live here and never on Parameter objects (those are lost under FSDP and copies).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fxparam.errors import PlanError


class _Rec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamPlan(_Rec):
    """What happens to one parameter.

    Attributes:
        role: its role from the analysis.
        init: "normal" (re-draw with ``init_std``), "zeros", or "keep" (leave the values).
        init_std: std of the normal init.
        lr_mult: Adam-family LR multiplier (relative to the base LR).
        sgd_lr_mult: SGD LR multiplier.
        wd_mult: weight-decay multiplier (coupled AdamW ``weight_decay``); 0 = no decay.
        eps_mult: Adam epsilon multiplier.
        density: mask density (SμPar), 1.0 = dense.
        tied_to: alias of another FQN's Parameter: that FQN's plan rules.
    """

    role: str
    init: Literal["normal", "zeros", "keep"] = "keep"
    init_std: float | None = None
    lr_mult: float = 1.0
    sgd_lr_mult: float = 1.0
    wd_mult: float = 1.0
    eps_mult: float = 1.0
    density: float = 1.0
    tied_to: str | None = None


class AttentionPlan(_Rec):
    """New logit scale of one attention site, and where it is set."""

    scale: float
    previous: float
    head_dim: int
    attr: str | None = None
    attr_module: str | None = None
    kind: str = "sdpa"


class MaskPlan(_Rec):
    """A static random mask on one parameter (SμPar): kept entries are a pure function of (seed, FQN).

    Attributes:
        density: fraction of entries kept, in (0, 1].
        seed: the SuPar seed.
        store: keep the mask in ``state_dict`` (a bool buffer key) instead of re-deriving it.
    """

    density: float
    seed: int
    store: bool = False


class Plan(_Rec):
    """A complete, JSON-serialisable description of a transform.

    Attributes:
        config: the config that produced it (JSON of the pydantic config).
        width, base_width, m_d: model width, base width and their ratio.
        depth, base_depth, m_L: number of residual blocks, base depth, ratio.
        params: per-parameter plan, for every FQN (tied aliases included).
        multipliers: forward multiplier applied to each module's output (embedding
            alpha_in, readout alpha_out/m_d, residual branches 1/m_L^alpha; combined).
        attention: per attention module, the new logit scale.
        masks: per masked parameter FQN (SμPar).
        norm_swaps: norm modules replaced by fused per-example-gradient versions (GNS).
        notes: human-readable decisions (e.g. the assumed base head dim).
    """

    version: int = 1
    fxparam_version: str = ""
    passes: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    model_class: str = ""
    width: int | None = None
    base_width: int | None = None
    m_d: float = 1.0
    depth: int = 0
    base_depth: int | None = None
    m_L: float = 1.0
    alpha: float | None = None
    params: dict[str, ParamPlan] = Field(default_factory=dict)
    multipliers: dict[str, float] = Field(default_factory=dict)
    attention: dict[str, AttentionPlan] = Field(default_factory=dict)
    masks: dict[str, MaskPlan] = Field(default_factory=dict)
    norm_swaps: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        try:
            return cls.model_validate_json(text)
        except Exception as exc:  # noqa: BLE001
            raise PlanError(f"not a valid fxparam plan: {exc}") from exc

    def fingerprint(self) -> str:
        """Stable hash of the plan (for compile cache keys)."""
        data = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    def multiply(self, module: str, factor: float) -> None:
        if factor != 1.0:
            self.multipliers[module] = self.multipliers.get(module, 1.0) * factor

    def rules_for(self, fqn: str) -> ParamPlan:
        """The plan that governs ``fqn``'s tensor (a tied alias defers to its owner)."""
        p = self.params[fqn]
        return self.params[p.tied_to] if p.tied_to else p

    def summary(self) -> str:
        from fxparam.analysis.report import _table

        head = (
            f"{self.model_class} plan [{' -> '.join(self.passes)}]: width {self.width}"
            f" (m_d={self.m_d:.4g}), depth {self.depth} (m_L={self.m_L:.4g})"
        )
        rows = [
            [n, p.role, p.init + (f"({p.init_std:.3g})" if p.init_std else ""), f"{p.lr_mult:.4g}",
             f"{p.wd_mult:.4g}", f"{p.eps_mult:.4g}", f"{p.density:.3g}", p.tied_to or ""]
            for n, p in self.params.items()
        ]
        lines = [head, ""] + _table(rows, ["parameter", "role", "init", "lr", "wd", "eps", "density", "tied to"])
        if self.multipliers:
            lines += ["", "forward multipliers:"] + [f"  {m}: x{v:.4g}" for m, v in self.multipliers.items()]
        if self.attention:
            first = next(iter(self.attention.items()))
            lines += ["", f"attention logit scale: {first[1].previous:.4g} -> {first[1].scale:.4g} "
                          f"({len(self.attention)} sites, e.g. {first[0]})"]
        if self.norm_swaps:
            lines += ["", f"norm swaps (GNS): {len(self.norm_swaps)}"]
        if self.masks:
            densities = ", ".join(f"{d:.4g}" for d in sorted({m.density for m in self.masks.values()}))
            seeds = ", ".join(str(s) for s in sorted({m.seed for m in self.masks.values()}))
            where = (
                "stored in state_dict"
                if any(m.store for m in self.masks.values())
                else "re-derived from (seed, FQN), not in state_dict"
            )
            lines += ["", f"masks (SuPar): {len(self.masks)} parameters, density {densities}, seed {seeds}; {where}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
