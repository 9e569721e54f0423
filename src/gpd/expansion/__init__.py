"""Inverse Reparameterization: the dynamic teacher as a plain wide copy of the student."""

from gpd.channel_maps import ChannelMap, WidthPlan
from gpd.expansion.expand import expand
from gpd.expansion.heads import register_fused_mlps, register_known_attentions
from gpd.expansion.rules import (
    ExpandedLayer,
    ExpansionRule,
    LayerContext,
    find_rule,
    register_channel_tensors,
    register_expansion_rule,
    register_when_imported,
    replace_tensors,
)
from gpd.expansion.timm_rules import register_timm_rules
from gpd.sharing.param_slice import ParamSlice

register_when_imported("timm", register_timm_rules)
register_known_attentions()
register_when_imported("timm", register_fused_mlps)

__all__ = [
    "ChannelMap",
    "ExpandedLayer",
    "ExpansionRule",
    "LayerContext",
    "ParamSlice",
    "WidthPlan",
    "expand",
    "find_rule",
    "register_channel_tensors",
    "register_expansion_rule",
    "replace_tensors",
]
