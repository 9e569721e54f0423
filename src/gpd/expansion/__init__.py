"""Inverse Reparameterization: the dynamic teacher as a plain wide copy of the student."""

from gpd.expansion.channels import ChannelMap, WidthPlan
from gpd.expansion.expand import expand
from gpd.expansion.rules import (
    ExpandedLayer,
    ExpansionRule,
    LayerContext,
    ParamSlice,
    find_rule,
    register_expansion_rule,
    replace_tensors,
)

__all__ = [
    "ChannelMap",
    "ExpandedLayer",
    "ExpansionRule",
    "LayerContext",
    "ParamSlice",
    "WidthPlan",
    "expand",
    "find_rule",
    "register_expansion_rule",
    "replace_tensors",
]
