"""gpd's expansion rule for transposed convolutions (``nn.ConvTranspose1d/2d/3d``): U-Net-style decoders.

A transposed conv sums over its *input* channels as a conv does, but stores its weight the
other way round: ``(in_channels, out_channels / groups, *kernel)``. So D's weight is the
conv rule's transposed: W/r blocks on the input axis (dim 0, the divided one), tiled on the
output axis (dim 1); the layer reading the image keeps dim 0 and tiles dim 1, the layer
writing the output divides dim 0 and keeps dim 1. Grouped and depthwise ones are tiled
(r times the groups, each of D's groups a copy of one student group: dim 0 tiled, the
within-group output axis kept), or, in the interleaved layout, kept at the student's group
count with each group r times wider, as :func:`gpd.expansion.torch_rules.expand_conv` does.
Stride, padding, ``output_padding`` and dilation act on the spatial axes only: D keeps them.
The paper scales are a conv's of the same role (docs/method.md, "Per-layer steps").
"""

from __future__ import annotations

from typing import cast

from torch import nn

from gpd.channel_maps import identity_map
from gpd.expansion.rules import ExpandedLayer, LayerContext
from gpd.expansion.torch_rules import (
    check_groups,
    conv_layer,
    grouped_out_map,
    paper_bias_scale,
    paper_weight_scale,
    wide_group_local_maps,
)
from gpd.sharing.param_slice import ParamSlice

__all__ = ["expand_conv_transpose"]

INPUT_AXIS = 0  # of a transposed conv's weight: the axis it sums over, which D divides
OUTPUT_AXIS = 1  # the output channels within a group


def expand_conv_transpose(module: nn.modules.conv._ConvNd, ctx: LayerContext) -> ExpandedLayer:
    """ConvTranspose1d/2d/3d: ungrouped ones divide by the input copies on dim 0; grouped ones tile."""
    module = cast(nn.modules.conv._ConvTransposeNd, module)
    in_map = ctx.in_map(module.in_channels, 1)
    out_map = identity_map(module.out_channels) if ctx.reads_other_axis(in_map) else ctx.out_map(module.out_channels, 1)
    if module.groups > 1 and not in_map.is_identity:
        out_map = grouped_out_map(module, ctx, in_map) or out_map
    wide = (
        wide_group_local_maps(module, in_map, out_map)
        if module.groups > 1
        and ctx.plan.layout == "interleaved"
        and module.in_channels != module.groups  # depthwise ones tile in either layout
        and ctx.expand_input
        else None
    )
    if module.groups == 1:
        weight = in_map.expand(out_map.expand(module.weight, OUTPUT_AXIS), INPUT_AXIS, divide=True)
        weight_slice = ParamSlice(
            {INPUT_AXIS: in_map, OUTPUT_AXIS: out_map},
            divided_dim=None if in_map.is_identity else INPUT_AXIS,
            paper_scale=paper_weight_scale(in_map, out_map),
        )
        bias_scale = paper_bias_scale(out_map)
        groups = 1
    elif wide is not None:  # each of the student's groups r times wider: read all copies of its inputs
        local_out = wide[1]
        weight = local_out.expand(in_map.expand(module.weight, INPUT_AXIS, divide=True), OUTPUT_AXIS)
        weight_slice = ParamSlice(
            {INPUT_AXIS: in_map, OUTPUT_AXIS: local_out},
            divided_dim=INPUT_AXIS,
            paper_scale=paper_weight_scale(in_map, local_out),
        )
        bias_scale = paper_bias_scale(out_map)
        groups = module.groups
    else:  # r times the groups, each a copy of one student group (the paper's layout wraps it: scale 1)
        groups = check_groups(module, ctx, in_map, out_map)
        weight = in_map.expand(module.weight, INPUT_AXIS)
        weight_slice = ParamSlice({INPUT_AXIS: in_map})
        bias_scale = 1.0
    return conv_layer(module, weight, weight_slice, in_map, out_map, groups, bias_scale)
