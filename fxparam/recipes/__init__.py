"""Hyperparameter recipes: D2Z, the AdamW timescale / Power Lines, TREC, loss-curve collapse.

Math and sources: ``docs/reference/hp_laws.md`` (Bergsma et al. 2025 a-d; Al-Khateeb et al. 2023).
Constants marked (default, recalibrate) live in :class:`LawConstants` and the module constants of
``fxparam.recipes._constants``; every function takes overrides, and :func:`fit_power_law` refits
them from your own sweeps.

Example:
    >>> from fxparam import recipes
    >>> r = recipes.recommend(params=610e6, tokens=48.5e9, seq_len=2048, base_lr=1.62e-2, width_multiplier=8)
    >>> r.schedule.final_fraction, r.warmup_steps == round(0.1 * r.steps)
    (0.0, True)
"""

from fxparam.models.alibi import ALiBi, alibi_attention_bias, alibi_bias, alibi_slopes, interpolation_factor
from fxparam.recipes._collapse import (
    CollapseReport,
    NormalisedCurve,
    collapse_plot,
    collapse_residual,
    collapse_surrogate,
    fit_collapse_surrogate,
    forecast_final_loss,
    normalise_curve,
    read_loss_csv,
    smooth_curve,
)
from fxparam.recipes._constants import LawConstants
from fxparam.recipes._ema import EMAProfile, ema_profile, group_ema_profiles
from fxparam.recipes._fit import PowerLawFit, fit_power_law
from fxparam.recipes._recommend import DEFAULT_GROUPS, GroupRecipe, Recipe, recommend
from fxparam.recipes._timescale import GroupTimescale, b_crit, b_opt, lambda_opt, tau, tau_opt, timescale
from fxparam.recipes._trec import TRECPrediction, Window, fit_trec_exponent, predict_trec, rank_windows
from fxparam.recipes.schedules import Schedule, lr_values, make_schedule

__all__ = [
    "ALiBi",
    "CollapseReport",
    "DEFAULT_GROUPS",
    "EMAProfile",
    "GroupRecipe",
    "GroupTimescale",
    "LawConstants",
    "NormalisedCurve",
    "PowerLawFit",
    "Recipe",
    "Schedule",
    "TRECPrediction",
    "Window",
    "alibi_attention_bias",
    "alibi_bias",
    "alibi_slopes",
    "b_crit",
    "b_opt",
    "collapse_plot",
    "collapse_residual",
    "collapse_surrogate",
    "ema_profile",
    "fit_collapse_surrogate",
    "fit_power_law",
    "fit_trec_exponent",
    "forecast_final_loss",
    "group_ema_profiles",
    "interpolation_factor",
    "lambda_opt",
    "lr_values",
    "make_schedule",
    "normalise_curve",
    "predict_trec",
    "rank_windows",
    "read_loss_csv",
    "recommend",
    "smooth_curve",
    "tau",
    "tau_opt",
    "timescale",
]
