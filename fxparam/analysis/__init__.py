"""Structural analysis of a captured model (pure: graph in, facts out)."""

from fxparam.analysis.analyse import analyse, tied_groups
from fxparam.analysis.facts import Analysis, AttentionSite, NormSite, ParamInfo, ResidualSite

__all__ = ["Analysis", "AttentionSite", "NormSite", "ParamInfo", "ResidualSite", "analyse", "tied_groups"]
