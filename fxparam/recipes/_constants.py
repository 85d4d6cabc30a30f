"""Default constants of the hyperparameter laws, with their provenance.

All of them are **(default, recalibrate)**: they come from one setup (muP/CompleteP
GPT-2-style models on SlimPajama-like data) or from secondary reports. Exponents transfer
better than coefficients. Refit them on your own sweeps with :func:`fxparam.recipes.fit_power_law`
and pass the result as keyword overrides, or as a :class:`LawConstants` to ``recommend``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: tau_opt coefficient in ``tau_opt = C_TAU * TPP**M_TAU``. Power Lines (Bergsma et al., NeurIPS 2025,
#: arXiv 2505.13738), fitted on muP GPT-2-style models. The Celerity models used a ~20% lower
#: coefficient with the same slope (tau = 0.175 / 0.087 / ~0.05 at 20 / 80 / 234 TPP).
C_TAU = 1.084
#: tau_opt exponent in TPP (Power Lines). (default, recalibrate)
M_TAU = -0.527
#: B_opt coefficient in ``B_opt = C_B * D**M_B``, B in 2048-token sequences, D in tokens (Power Lines).
C_B = 0.0306
#: B_opt exponent in D (Power Lines). The Celerity recipe followed B_opt ~ D**0.5. (default, recalibrate)
M_B = 0.383
#: The sequence length in which ``C_B`` expresses the batch size.
B_UNIT_SEQ_LEN = 2048
#: Critical-batch exponent ``B_crit ~ D**0.462`` (Power Lines); no coefficient is published.
M_BCRIT = 0.462
#: Warmup as a fraction of the steps (Straight to Zero, Cerebras runs).
WARMUP_FRACTION = 0.1
#: TREC shape exponent ``p`` in ``1 - c**p * t**m`` (Bergsma, Dey, Hestness, arXiv 2509.25380).
TREC_P = 0.5
#: Collapse surrogate constants (Scaling with Collapse, arXiv 2509.25087).
COLLAPSE_M = 0.05
COLLAPSE_EPS1 = 0.001
COLLAPSE_EPS2 = 0.1


class LawConstants(BaseModel):
    """The constants of the hyperparameter laws, all overridable (frozen; JSON round-trips).

    Every field is a **(default, recalibrate)** value; see the module constants for provenance.

    Attributes:
        version: schema version.
        c_tau: coefficient of ``tau_opt = c_tau * TPP**m_tau`` (Power Lines: 1.084).
        m_tau: exponent of the same law (Power Lines: -0.527).
        c_b: coefficient of ``B_opt = c_b * D**m_b`` with B in ``b_unit_seq_len``-token sequences
            and D in tokens (Power Lines: 0.0306).
        m_b: exponent of the same law (Power Lines: 0.383).
        b_unit_seq_len: the sequence length of ``c_b``'s unit (2048).
        m_bcrit: exponent of ``B_crit ~ D**m_bcrit`` (Power Lines: 0.462).
        warmup_fraction: warmup as a fraction of steps (Straight to Zero: 0.1).
        trec_p: TREC exponent ``p`` (0.5).
        collapse_m, collapse_eps1, collapse_eps2: loss-collapse surrogate constants (0.05, 0.001, 0.1).

    Example:
        >>> LawConstants(c_tau=0.87).m_tau
        -0.527
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    c_tau: float = Field(default=C_TAU, gt=0, description="tau_opt coefficient (Power Lines).")
    m_tau: float = Field(default=M_TAU, description="tau_opt exponent in TPP (Power Lines).")
    c_b: float = Field(default=C_B, gt=0, description="B_opt coefficient, B in sequences of b_unit_seq_len.")
    m_b: float = Field(default=M_B, description="B_opt exponent in tokens (Power Lines).")
    b_unit_seq_len: int = Field(default=B_UNIT_SEQ_LEN, gt=0, description="Sequence length of c_b's unit.")
    m_bcrit: float = Field(default=M_BCRIT, description="B_crit exponent in tokens (Power Lines).")
    warmup_fraction: float = Field(
        default=WARMUP_FRACTION, ge=0, lt=1, description="Warmup fraction of steps."
    )
    trec_p: float = Field(default=TREC_P, gt=0, description="TREC exponent p.")
    collapse_m: float = Field(default=COLLAPSE_M, description="Collapse surrogate power m.")
    collapse_eps1: float = Field(default=COLLAPSE_EPS1, gt=0, description="Collapse surrogate epsilon_1.")
    collapse_eps2: float = Field(default=COLLAPSE_EPS2, gt=0, description="Collapse surrogate epsilon_2.")
