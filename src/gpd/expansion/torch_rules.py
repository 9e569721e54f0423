"""gpd's built-in expansion rules for torch's layers: convolutions, Linear, the norms, PReLU and
the parameter-free layers, with the helpers other rules build on (the paper's scales, grouped
convolutions' layouts, :func:`expand_linear_with_maps`).

:func:`register_torch_rules` registers them as built-ins of :data:`gpd.expansion.rules.RULES`
(``import gpd.expansion`` does): a rule of the user's for one of these classes replaces gpd's.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import nn

from gpd.channel_maps import ChannelMap, identity_map
from gpd.expansion.rules import RULES, ExpandedLayer, LayerContext, register_expansion_rule, replace_tensors
from gpd.sharing.param_slice import ParamSlice

__all__ = [
    "PARAMETER_FREE_LAYERS",
    "check_groups",
    "expand_batchnorm",
    "expand_channel_vectors",
    "expand_conv",
    "expand_embedding",
    "expand_groupnorm",
    "expand_layernorm",
    "expand_layernorm_with_map",
    "expand_linear",
    "expand_linear_with_maps",
    "grouped_out_map",
    "keep_unchanged",
    "paper_bias_scale",
    "paper_weight_scale",
    "register_torch_rules",
    "wide_group_local_maps",
    "wide_group_maps",
]


class GroupedLayer(Protocol):
    """What the grouped-convolution helpers read: a conv, or a block that is one (OREPAConv2d)."""

    @property
    def in_channels(self) -> int: ...

    @property
    def out_channels(self) -> int: ...

    @property
    def groups(self) -> int: ...


def _copies(channel_map: ChannelMap) -> float:
    """How many times D's axis holds the student's (r; the plain ratio of sizes when uneven)."""
    return channel_map.dynamic_size / channel_map.student_size


def paper_weight_scale(in_map: ChannelMap, out_map: ChannelMap) -> float:
    """``paper_scale`` of an ungrouped conv/linear weight (see :class:`ParamSlice`).

    gpd divides by the copies of the input axis; the paper's layout divides by the
    copies of the output axis. They agree where both or neither side is expanded.
    """
    return _copies(in_map) / _copies(out_map)


def paper_bias_scale(out_map: ChannelMap) -> float:
    """``paper_scale`` of an ungrouped conv/linear bias: the paper's layout divides it by the output copies."""
    return 1.0 / _copies(out_map)


def grouped_out_map(module: GroupedLayer, ctx: LayerContext, in_map: ChannelMap) -> ChannelMap | None:
    """The output layout of a grouped conv whose input has a measured (permuted) layout.

    Each of D's groups must read one whole student group, in order; its outputs are then
    that group's outputs, in order. None where the input does not split into whole groups.
    """
    in_per_group = module.in_channels // module.groups
    out_per_group = module.out_channels // module.groups
    if in_map.dynamic_size % in_per_group:
        return None
    src = in_map.source.view(-1, in_per_group)
    group_of = src[:, 0] // in_per_group
    if not torch.equal(src, group_of[:, None] * in_per_group + torch.arange(in_per_group)):
        return None
    source = (group_of[:, None] * out_per_group + torch.arange(out_per_group)).reshape(-1)
    first = torch.full((module.out_channels,), source.numel(), dtype=torch.long)
    first.scatter_reduce_(0, source, torch.arange(source.numel()), reduce="amin")
    if bool((first == source.numel()).any()):
        return None
    return ChannelMap(source=source, student_size=module.out_channels, student_index=first)


def check_groups(module: GroupedLayer, ctx: LayerContext, in_map: ChannelMap, out_map: ChannelMap) -> int:
    """The group count of D's grouped conv, after checking each D group copies one S group."""
    groups = module.groups
    in_per_group = module.in_channels // groups
    out_per_group = module.out_channels // groups
    if ctx.expand_input != ctx.expand_output:
        raise ctx.error(module, "a grouped convolution must have both or neither of its sides expanded")
    if in_map.dynamic_size % in_per_group or out_map.dynamic_size % out_per_group:
        raise ctx.error(
            module,
            f"ratio {ctx.plan.ratio} gives {in_map.dynamic_size} channels, not a multiple of the "
            f"group width {in_per_group}; use an integer ratio",
        )
    new_groups = in_map.dynamic_size // in_per_group
    if out_map.dynamic_size // out_per_group != new_groups:
        raise ctx.error(module, f"ratio {ctx.plan.ratio} breaks the group structure; use an integer ratio")
    src_in = in_map.source.view(new_groups, in_per_group)
    src_out = out_map.source.view(new_groups, out_per_group)
    group_of = src_in[:, 0] // in_per_group
    exact = torch.equal(src_in, group_of[:, None] * in_per_group + torch.arange(in_per_group)) and torch.equal(
        src_out, group_of[:, None] * out_per_group + torch.arange(out_per_group)
    )
    if not exact:
        raise ctx.error(module, f"ratio {ctx.plan.ratio} splits a group across copies; use an integer ratio")
    return new_groups


def _local_map(channel_map: ChannelMap, groups: int, per_group: int) -> ChannelMap | None:
    """The map within a group when each of D's ``groups`` equal chunks copies one student group, in
    order, all in the same pattern (the interleaved layout); None otherwise."""
    if channel_map.dynamic_size % groups:
        return None
    chunks = channel_map.source.view(groups, -1)
    local = chunks - (torch.arange(groups) * per_group)[:, None]
    if bool((local < 0).any() or (local >= per_group).any()) or not bool((local == local[0]).all()):
        return None
    source = local[0].clone()
    counts = torch.bincount(source, minlength=per_group)
    if bool((counts == 0).any()):
        return None
    first = torch.full((per_group,), source.numel(), dtype=torch.long)
    first.scatter_reduce_(0, source, torch.arange(source.numel()), reduce="amin")
    return ChannelMap(source=source, student_size=per_group, student_index=first)


def wide_group_maps(module: GroupedLayer, in_map: ChannelMap, out_map: ChannelMap) -> ChannelMap | None:
    """A grouped conv whose input holds each student group's copies side by side (interleaved).

    D keeps the student's group count, each group ``r`` times wider: every one of its
    outputs reads all copies of its group's inputs, divided by their number, like an
    ungrouped conv restricted to the group. Returns the within-group input map, or None
    where the layouts do not group that way.
    """
    local = wide_group_local_maps(module, in_map, out_map)
    return local[0] if local is not None else None


def wide_group_local_maps(
    module: GroupedLayer, in_map: ChannelMap, out_map: ChannelMap
) -> tuple[ChannelMap, ChannelMap] | None:
    """The within-group input and output maps of :func:`wide_group_maps` (a transposed conv's
    weight holds the within-group axis on the output side); None where the layouts do not group."""
    groups = module.groups
    local_out = _local_map(out_map, groups, module.out_channels // groups)
    local_in = _local_map(in_map, groups, module.in_channels // groups)
    return (local_in, local_out) if local_in is not None and local_out is not None else None


def _wide_group_input(
    module: GroupedLayer, ctx: LayerContext, in_map: ChannelMap, out_map: ChannelMap
) -> ChannelMap | None:
    """The within-group input map of a grouped conv D keeps at the student's group count: in the
    interleaved layout, for groups wider than one channel (depthwise convs tile as before)."""
    if ctx.plan.layout != "interleaved" or module.in_channels == module.groups or not ctx.expand_input:
        return None
    return wide_group_maps(module, in_map, out_map)


def expand_conv(module: nn.modules.conv._ConvNd, ctx: LayerContext) -> ExpandedLayer:
    """Conv1d/2d/3d: ungrouped convs divide by the input copies; grouped convs tile."""
    if getattr(module, "transposed", False):  # a rule of the user's may hand one here
        from gpd.expansion.conv_transpose import expand_conv_transpose

        return expand_conv_transpose(module, ctx)
    in_map = ctx.in_map(module.in_channels, 1)
    out_map = identity_map(module.out_channels) if ctx.reads_other_axis(in_map) else ctx.out_map(module.out_channels, 1)
    if module.groups > 1 and not in_map.is_identity:
        out_map = grouped_out_map(module, ctx, in_map) or out_map
    if module.groups == 1:
        weight = in_map.expand(out_map.expand(module.weight, 0), 1, divide=True)
        weight_slice = ParamSlice(
            {0: out_map, 1: in_map},
            divided_dim=None if in_map.is_identity else 1,
            paper_scale=paper_weight_scale(in_map, out_map),
        )
        bias_scale = paper_bias_scale(out_map)
        groups = 1
    elif (local_in := _wide_group_input(module, ctx, in_map, out_map)) is not None:
        weight = local_in.expand(out_map.expand(module.weight, 0), 1, divide=True)
        weight_slice = ParamSlice(
            {0: out_map, 1: local_in}, divided_dim=1, paper_scale=paper_weight_scale(local_in, out_map)
        )
        bias_scale = paper_bias_scale(out_map)
        groups = module.groups
    else:  # the paper's layout scales a grouped conv's input and output instead: same tensors as here
        groups = check_groups(module, ctx, in_map, out_map)
        weight = out_map.expand(module.weight, 0)
        weight_slice = ParamSlice({0: out_map})
        bias_scale = 1.0
    return conv_layer(module, weight, weight_slice, in_map, out_map, groups, bias_scale)


def conv_layer(
    module: nn.modules.conv._ConvNd,
    weight: torch.Tensor,
    weight_slice: ParamSlice,
    in_map: ChannelMap,
    out_map: ChannelMap,
    groups: int,
    bias_scale: float,
) -> ExpandedLayer:
    """D's copy of a convolution (plain or transposed) from its expanded weight: the bias tiled on the
    output channels, and the size attributes set."""
    params = {"weight": weight}
    slices = {"weight": weight_slice}
    if module.bias is not None:
        params["bias"] = out_map.expand(module.bias, 0)
        slices["bias"] = ParamSlice({0: out_map}, paper_scale=bias_scale)
    new = replace_tensors(module, params)
    new.in_channels, new.out_channels, new.groups = in_map.dynamic_size, out_map.dynamic_size, groups
    return ExpandedLayer(new, slices, output_map=out_map)


def expand_linear_with_maps(module: nn.Linear, in_map: ChannelMap, out_map: ChannelMap) -> ExpandedLayer:
    """A Linear whose input and output axes follow the given maps (divided on the input)."""
    params = {"weight": in_map.expand(out_map.expand(module.weight, 0), 1, divide=True)}
    slices = {
        "weight": ParamSlice(
            {0: out_map, 1: in_map},
            divided_dim=None if in_map.is_identity else 1,
            paper_scale=paper_weight_scale(in_map, out_map),
        )
    }
    if module.bias is not None:
        params["bias"] = out_map.expand(module.bias, 0)
        slices["bias"] = ParamSlice({0: out_map}, paper_scale=paper_bias_scale(out_map))
    new = replace_tensors(module, params)
    new.in_features, new.out_features = in_map.dynamic_size, out_map.dynamic_size
    return ExpandedLayer(new, slices, output_map=out_map)


def expand_linear(module: nn.Linear, ctx: LayerContext) -> ExpandedLayer:
    """Linear: like an ungrouped conv, on the last axis (kept as is where that axis is not expanded)."""
    in_map = ctx.in_map(module.in_features, -1)
    out_map = (
        identity_map(module.out_features) if ctx.reads_other_axis(in_map) else ctx.out_map(module.out_features, -1)
    )
    return expand_linear_with_maps(module, in_map, out_map)


def expand_batchnorm(module: nn.modules.batchnorm._NormBase, ctx: LayerContext) -> ExpandedLayer:
    """BatchNorm/InstanceNorm: per-channel affine and statistics are tiled."""
    channel_map = ctx.out_map(module.num_features, 1)
    params = {
        n: channel_map.expand(getattr(module, n), 0) for n in ("weight", "bias") if getattr(module, n) is not None
    }
    buffers = {
        n: channel_map.expand(getattr(module, n), 0)
        for n in ("running_mean", "running_var")
        if getattr(module, n, None) is not None
    }
    new = replace_tensors(module, params, buffers)
    new.num_features = channel_map.dynamic_size
    return ExpandedLayer(new, {n: ParamSlice({0: channel_map}) for n in params}, output_map=channel_map)


def expand_layernorm(module: nn.LayerNorm, ctx: LayerContext) -> ExpandedLayer:
    """LayerNorm over the channel axis: exact only when every channel has the same copies."""
    if len(module.normalized_shape) != 1:
        raise ctx.error(module, f"only a LayerNorm over one axis can be expanded, got {tuple(module.normalized_shape)}")
    return expand_layernorm_with_map(module, ctx, ctx.out_map(module.normalized_shape[0]))


def expand_layernorm_with_map(module: nn.LayerNorm, ctx: LayerContext, channel_map: ChannelMap) -> ExpandedLayer:
    """A LayerNorm whose normalised axis follows ``channel_map``."""
    if not channel_map.is_identity and channel_map.uniform_count is None:
        raise ctx.error(
            module,
            f"ratio {ctx.plan.ratio} copies some channels more than others, which changes "
            "LayerNorm's mean and variance; use an integer ratio",
        )
    params = {
        n: channel_map.expand(getattr(module, n), 0) for n in ("weight", "bias") if getattr(module, n, None) is not None
    }
    new = replace_tensors(module, params)
    new.normalized_shape = (channel_map.dynamic_size,)
    return ExpandedLayer(new, {n: ParamSlice({0: channel_map}) for n in params}, output_map=channel_map)


def expand_groupnorm(module: nn.GroupNorm, ctx: LayerContext) -> ExpandedLayer:
    """GroupNorm: r times the groups, so each D group is a copy of one student group."""
    channel_map = ctx.out_map(module.num_channels, 1)
    count = channel_map.uniform_count
    if count is None:
        raise ctx.error(module, f"ratio {ctx.plan.ratio} is not an integer; GroupNorm needs whole copies")
    per_group = module.num_channels // module.num_groups
    groups = channel_map.source.view(-1, per_group) // per_group
    if not bool((groups == groups[:, :1]).all()):
        raise ctx.error(module, "its input's channel layout splits a group across D's groups")
    params = {
        n: channel_map.expand(getattr(module, n), 0) for n in ("weight", "bias") if getattr(module, n) is not None
    }
    new = replace_tensors(module, params)
    new.num_channels, new.num_groups = channel_map.dynamic_size, module.num_groups * count
    return ExpandedLayer(new, {n: ParamSlice({0: channel_map}) for n in params}, output_map=channel_map)


def expand_channel_vectors(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """Layers whose parameters are all per-channel vectors (layer scale, PReLU with C slopes)."""
    params: dict[str, torch.Tensor] = {}
    slices: dict[str, ParamSlice] = {}
    for name, param in module.named_parameters(recurse=False):
        if param.ndim != 1:
            raise ctx.error(module, f"parameter '{name}' of shape {tuple(param.shape)} is not a per-channel vector")
        channel_map = ctx.out_map(param.numel()) if param.numel() > 1 else identity_map(1)
        params[name] = channel_map.expand(param, 0)
        slices[name] = ParamSlice({0: channel_map})
    return ExpandedLayer(replace_tensors(module, params), slices)


def expand_embedding(module: nn.Embedding, ctx: LayerContext) -> ExpandedLayer:
    """Embedding: each row is tiled on ``embedding_dim`` (a lookup sums over nothing: never divided).

    It writes activations from the input's indices as a stem writes them from the image, so the
    paper's layout stores it ``/ r`` (``paper_scale``, docs/method.md "Per-layer steps"). The
    ``padding_idx`` row stays a tiled row that no gradient reaches. ``max_norm`` renormalises
    whole rows: a row of r copies has ``r ** (1 / norm_type)`` times the norm, so D's bound is
    scaled by the same factor and renormalises exactly the rows the student does (whole copies only).
    """
    channel_map = ctx.out_map(module.embedding_dim, -1)
    new = replace_tensors(module, {"weight": channel_map.expand(module.weight, 1)})
    new.embedding_dim = channel_map.dynamic_size
    if module.max_norm is not None and not channel_map.is_identity:
        count = channel_map.uniform_count
        if count is None:
            raise ctx.error(module, f"ratio {ctx.plan.ratio} copies rows unevenly, which changes max_norm's row norms")
        new.max_norm = module.max_norm * count ** (1.0 / module.norm_type)
    scale = channel_map.student_size / channel_map.dynamic_size
    return ExpandedLayer(new, {"weight": ParamSlice({1: channel_map}, paper_scale=scale)}, output_map=channel_map)


def keep_unchanged(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """Parameter-free elementwise or per-channel layers need no change."""
    return ExpandedLayer(copy.deepcopy(module), {})


PARAMETER_FREE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)  # fmt: skip


def register_torch_rules() -> None:
    """Register the rules above for torch's layers as built-ins (idempotent)."""
    with RULES.builtin_registrations():
        register_expansion_rule(nn.modules.conv._ConvNd, expand_conv)
        from gpd.expansion.conv_transpose import expand_conv_transpose  # it builds on the helpers here

        register_expansion_rule(nn.modules.conv._ConvTransposeNd, expand_conv_transpose)
        register_expansion_rule(nn.Linear, expand_linear)
        register_expansion_rule(nn.Embedding, expand_embedding)
        register_expansion_rule(nn.modules.batchnorm._NormBase, expand_batchnorm, channelwise=True)
        register_expansion_rule(nn.LayerNorm, expand_layernorm, channelwise=True)
        register_expansion_rule(nn.GroupNorm, expand_groupnorm, channelwise=True)
        register_expansion_rule(nn.PReLU, expand_channel_vectors, channelwise=True)
        for layer in PARAMETER_FREE_LAYERS:
            register_expansion_rule(layer, keep_unchanged, channelwise=True)
