"""Inverse Reparameterization: the dynamic teacher as a plain wide copy of the student."""

from gpd.channel_maps import ChannelMap, WidthPlan
from gpd.expansion.expand import expand
from gpd.expansion.head_tables import register_head_tensors
from gpd.expansion.heads import register_fused_mlps, register_known_attentions
from gpd.expansion.rules import (
    RULES,
    ExpandedLayer,
    ExpansionRule,
    LayerContext,
    RuleSet,
    find_rule,
    register_channel_tensors,
    register_expansion_rule,
    register_when_imported,
    replace_tensors,
)
from gpd.expansion.timm_rules import register_timm_rules
from gpd.expansion.torch_rules import register_torch_rules
from gpd.expansion.transformers_text import register_transformers_text_rules
from gpd.expansion.transformers_vision import register_transformers_vision_rules
from gpd.sharing.param_slice import ParamSlice

register_torch_rules()
with RULES.builtin_registrations():
    register_known_attentions()  # torch's now, timm's and torchvision's once imported
register_when_imported("timm", register_timm_rules)
register_when_imported("timm", register_fused_mlps)
register_when_imported("transformers", register_transformers_vision_rules)
register_when_imported("transformers", register_transformers_text_rules)

__all__ = [
    "RULES",
    "ChannelMap",
    "ExpandedLayer",
    "ExpansionRule",
    "LayerContext",
    "ParamSlice",
    "RuleSet",
    "WidthPlan",
    "expand",
    "find_rule",
    "register_channel_tensors",
    "register_expansion_rule",
    "register_head_tensors",
    "replace_tensors",
]
