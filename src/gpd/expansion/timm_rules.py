"""Expansion rules for timm's layers: attention, layer scale, tokens and embeddings.

Multi-head attention keeps its head dimension and multiplies its number of heads:
the fused qkv projection is expanded per segment (``[q..q, k..k, v..v]``), so head
``j + H`` of D starts as a copy of head ``j`` and D's attention output is the tiled
student output. Class/distillation tokens, position embeddings and layer-scale
vectors are tiled on the channel axis, never divided.
"""

from __future__ import annotations

import copy
from typing import Protocol, cast

import torch
from torch import nn

from gpd.channel_maps import ChannelMap, concat_maps
from gpd.expansion.generic import register_channel_attributes
from gpd.expansion.rules import ExpandedLayer, LayerContext, register_channel_tensors, register_expansion_rule
from gpd.expansion.torch_rules import (
    expand_channel_vectors,
    expand_conv,
    expand_layernorm_with_map,
    expand_linear_with_maps,
    paper_weight_scale,
)
from gpd.sharing.param_slice import ParamSlice


def _check_whole_heads(module: nn.Module, ctx: LayerContext, channel_map: ChannelMap, head_dim: int) -> None:
    """Each of D's heads must copy one whole student head, in order."""
    size = channel_map.dynamic_size
    if size % head_dim:
        raise ctx.error(
            module,
            f"ratio {ctx.plan.ratio} gives {size} channels, not a whole number of heads of {head_dim}; "
            "use an integer ratio",
        )
    source = channel_map.source.view(-1, head_dim)
    if not torch.equal(source, source[:, :1] + torch.arange(head_dim)) or bool((source[:, 0] % head_dim).any()):
        raise ctx.error(module, f"ratio {ctx.plan.ratio} splits attention heads; use an integer ratio")


class TimmAttention(Protocol):
    """What :func:`expand_timm_attention` reads of timm's Attention (``attn_dim`` and ``gate`` where present)."""

    qkv: nn.Linear
    proj: nn.Linear
    head_dim: int
    num_heads: int


def expand_timm_attention(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """timm's Attention: r times the heads, qkv expanded per segment."""
    if not (ctx.expand_input and ctx.expand_output):
        raise ctx.error(module, "attention that reads the input or writes the output is not supported")
    attention = cast(TimmAttention, module)  # registered for timm.layers.attention.Attention
    dim = attention.qkv.in_features
    head_dim = attention.head_dim
    attn_dim: int = getattr(module, "attn_dim", attention.num_heads * head_dim)
    in_map = ctx.plan.map(dim)
    head_map = ctx.plan.map(attn_dim, block=head_dim)
    _check_whole_heads(module, ctx, head_map, head_dim)

    layers: dict[str, ExpandedLayer] = {
        "qkv": expand_linear_with_maps(attention.qkv, in_map, concat_maps([head_map] * 3)),
        "proj": expand_linear_with_maps(attention.proj, head_map, ctx.plan.map(attention.proj.out_features)),
    }
    gate = getattr(module, "gate", None)
    if gate is not None:
        layers["gate"] = expand_linear_with_maps(gate, in_map, head_map)
    for name in ("q_norm", "k_norm", "norm"):
        child = getattr(module, name, None)
        if child is None or not any(True for _ in child.parameters()):
            continue
        if not isinstance(child, nn.LayerNorm) or len(child.normalized_shape) != 1:
            raise ctx.error(module, f"'{name}' is a {type(child).__name__}, which the attention rule does not expand")
        if child.normalized_shape[0] == head_dim and name != "norm":
            continue  # q/k norm over the head dimension, which D keeps
        layers[name] = expand_layernorm_with_map(child, ctx, head_map)

    new = _copy_with_children(module, {name: layer.module for name, layer in layers.items()})
    sizes = {"num_heads": head_map.dynamic_size // head_dim}
    if hasattr(new, "attn_dim"):
        sizes["attn_dim"] = head_map.dynamic_size
    for name, size in sizes.items():
        setattr(new, name, size)
    params = {f"{name}.{p}": s for name, layer in layers.items() for p, s in layer.params.items()}
    return ExpandedLayer(new, params, output_map=layers["proj"].output_map)


class ScaledStdConv(Protocol):
    gain: nn.Parameter  # per output channel


def expand_scaled_std_conv(module: nn.Conv2d, ctx: LayerContext) -> ExpandedLayer:
    """timm's ScaledStdConv2d (NF-ResNet, NFNet): weight standardisation per output channel.

    Standardising ``W / r`` blocks gives the standardised W again, so D cannot divide the
    weight: it tiles it (same mean and variance per output channel, same eps) and
    divides the gain by the copies of the input instead (the ``scale`` attribute,
    1/sqrt(fan-in) of the student, is kept, so r input copies sum to the student's
    output). The student reads the gain times r. Grouped convs read one copy per group:
    nothing is divided. Uneven copies (ratio 1.5) cannot be divided per output channel.
    """
    base = expand_conv(module, ctx)  # shapes, groups, bias; its weight is replaced below
    in_map, out_map = ctx.in_map(module.in_channels, 1), base.output_map
    assert out_map is not None  # expand_conv gives its output map
    divided = module.groups == 1 and not in_map.is_identity
    count = in_map.uniform_count
    if divided and count is None:
        raise ctx.error(
            module, f"ratio {ctx.plan.ratio} copies input channels unevenly; a standardised conv needs whole copies"
        )
    new = base.module
    weight = out_map.expand(module.weight, 0)
    if module.groups == 1:
        weight = in_map.expand(weight, 1)
    copies = float(count) if divided and count is not None else 1.0
    student_gain = cast(ScaledStdConv, module).gain
    gain = out_map.expand(student_gain, 0) / copies
    new.weight = nn.Parameter(weight.detach().clone(), requires_grad=module.weight.requires_grad)
    new.gain = nn.Parameter(gain.detach().clone(), requires_grad=student_gain.requires_grad)
    params = dict(base.params)
    params["weight"] = ParamSlice({0: out_map, 1: in_map} if module.groups == 1 else {0: out_map})
    # the gain scales the output as a conv weight does: the same paper scale (docs/method.md)
    params["gain"] = ParamSlice({0: out_map}, divided_dim=0 if divided else None,
                                paper_scale=paper_weight_scale(in_map, out_map) if module.groups == 1 else 1.0)  # fmt: skip
    return ExpandedLayer(new, params, output_map=out_map)


def refuse_std_conv(module: nn.Conv2d, ctx: LayerContext) -> ExpandedLayer:
    """StdConv2d (BiT) has no gain to absorb the r copies of its input: not expandable exactly."""
    if ctx.expand_input and module.groups == 1:
        raise ctx.error(module, "a weight-standardised conv without a gain cannot sum r copies of its input exactly")
    return expand_conv(module, ctx)


def _copy_with_children(module: nn.Module, children: dict[str, nn.Module]) -> nn.Module:
    """A deep copy of ``module`` whose named children are replaced (they are not copied)."""
    memo = {id(getattr(module, name)): None for name in children}  # skip copying replaced children
    new = copy.deepcopy(module, memo)
    for name, child in children.items():
        setattr(new, name, child)
    return new


def register_timm_rules() -> None:
    """Register the rules for timm's layers, if timm is installed."""
    try:
        from timm.layers import LayerScale, LayerScale2d
        from timm.layers.attention import Attention
        from timm.models import convnext, vision_transformer
    except ImportError:  # timm is optional for the expansion engine
        return
    register_expansion_rule(Attention, expand_timm_attention)
    from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

    register_expansion_rule(ScaledStdConv2d, expand_scaled_std_conv)
    register_expansion_rule(ScaledStdConv2dSame, expand_scaled_std_conv)
    register_expansion_rule(StdConv2d, refuse_std_conv)
    register_expansion_rule(StdConv2dSame, refuse_std_conv)
    register_expansion_rule(LayerScale, expand_channel_vectors, channelwise=True)
    register_expansion_rule(LayerScale2d, expand_channel_vectors, channelwise=True)
    tokens = {"cls_token": -1, "reg_token": -1, "pos_embed": -1, "dist_token": -1}
    register_channel_tensors(vision_transformer.VisionTransformer, tokens)
    register_channel_tensors(convnext.ConvNeXtBlock, {"gamma": 0}, multiplies=True)
    register_split_attributes()


def register_split_attributes() -> None:
    """The channel counts that timm's blocks split, slice or partially add with in ``forward()``
    (CSPNet, GhostNet, DPN, Res2Net, MixNet, SK-ResNet, ReXNet, InceptionNeXt). D holds its own
    counts; the interleaved layout then makes the student's pieces D's (gpd.channel_maps)."""
    from timm.layers.mixed_conv2d import MixedConv2d
    from timm.layers.selective_kernel import SelectiveKernel
    from timm.models import cspnet, dpn, ghostnet, inception_next, res2net, rexnet

    declared = [
        (cspnet.CrossStage, ("expand_chs",)),
        (cspnet.CrossStage3, ("expand_chs",)),
        (ghostnet.GhostModule, ("out_chs",)),
        (ghostnet.GhostModuleV2, ("out_chs",)),
        (ghostnet.GhostModuleV3, ("out_chs",)),
        (dpn.DualPathBlock, ("num_1x1_c",)),
        (res2net.Bottle2neck, ("width",)),
        (MixedConv2d, ("splits",)),
        (SelectiveKernel, ("in_channels",)),
        (rexnet.LinearBottleneck, ("in_channels",)),
        (inception_next.InceptionDWConv2d, ("split_indexes",)),
    ]
    for module_class, names in declared:
        register_channel_attributes(module_class, names)
