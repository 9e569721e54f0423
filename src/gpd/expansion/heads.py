"""Attention with per-head tables: r times the heads, each table tiled per head.

D's attention has ``r * H`` heads, head ``h`` a copy of the student's head ``h % H``
(as for timm's Attention, docs/method.md). Tensors with one entry per head (Swin's
relative position bias table, LeViT/EfficientFormer attention biases, XCiT's
temperature) are tiled on their head axis; a fused projection that is reshaped
``(3, heads, head_dim)`` (or ``(2, ...)`` for k/v) is expanded per segment; size
attributes that count heads or attention channels (``num_heads``, ``val_attn_dim``)
are multiplied by r. Every other child is expanded by its own rule. The tables are
not summed over, so they are tiled, not divided; the paper's layout holds them
unchanged (the attention core is wrapped to see the student's scale), so their
``paper_scale`` is 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from gpd.channel_maps import ChannelMap, concat_maps
from gpd.expansion.generic import expand_generic_leaf, register_channel_attributes
from gpd.expansion.rules import ExpandedLayer, LayerContext, find_rule, register_expansion_rule, register_when_imported
from gpd.expansion.torch_rules import expand_linear_with_maps, keep_unchanged, paper_bias_scale, paper_weight_scale
from gpd.sharing.param_slice import ParamSlice


@dataclass(frozen=True)
class HeadSpec:
    """How one attention class lays out its heads."""

    fused: dict[str, int] = field(default_factory=dict)  # child Linear -> number of segments
    head_tensors: dict[str, int] = field(default_factory=dict)  # own tensor -> head axis
    channel_tensors: tuple[str, ...] = ()  # own per-attention-channel vectors (q_bias, v_bias, k_bias)
    scaled_attrs: tuple[str, ...] = ("num_heads",)
    caches: tuple[str, ...] = ()  # dict attributes cached from the student's tensors: emptied
    reads_heads: tuple[str, ...] = ("proj",)  # child Linears that read the heads' output (laid out head by head)


def _head_dim(module: nn.Module, channels: int) -> int:
    """The channels of one head on an axis of ``channels`` attention channels (1 if unknown)."""
    heads = getattr(module, "num_heads", None)
    return channels // heads if isinstance(heads, int) and heads > 0 and channels % heads == 0 else 1


def expand_subtree(module: nn.Module, ctx: LayerContext, name: str) -> ExpandedLayer:
    """Expand ``module`` and everything in it with each unit's own rule, both sides expanded."""
    entry = find_rule(module)
    sub = LayerContext(
        name=name, plan=ctx.plan, channelwise=entry.channelwise if entry else True, known_counts=ctx.known_counts
    )
    if entry is not None:
        return entry.rule(module, sub)
    children = list(module.named_children())
    if not children:
        has = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        return expand_generic_leaf(module, sub) if has else keep_unchanged(module, sub)
    if any(True for _ in module.parameters(recurse=False)):
        raise ctx.error(module, f"'{name}' holds tensors of its own inside an attention block")
    layers = {n: expand_subtree(child, ctx, f"{name}.{n}") for n, child in children}
    new = _copy_with_children(module, {n: layer.module for n, layer in layers.items()})
    params = {f"{n}.{p}": s for n, layer in layers.items() for p, s in layer.params.items()}
    return ExpandedLayer(new, params)


def _copy_with_children(module: nn.Module, children: dict[str, nn.Module]) -> nn.Module:
    memo = {id(getattr(module, name)): None for name in children}
    new = copy.deepcopy(module, memo)
    for name, child in children.items():
        setattr(new, name, child)
    return new


def head_attention_rule(spec: HeadSpec) -> Callable[[nn.Module, LayerContext], ExpandedLayer]:
    """The expansion rule of an attention class described by ``spec``."""

    def expand_head_attention(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
        if not ctx.plan.is_integer:
            raise ctx.error(module, f"ratio {ctx.plan.ratio} would split attention heads; use an integer ratio")
        if not (ctx.expand_input and ctx.expand_output):
            raise ctx.error(module, "attention that reads the input or writes the output is not supported")
        ratio = int(ctx.plan.ratio)
        layers: dict[str, ExpandedLayer] = {}
        head_maps: dict[int, ChannelMap] = {}  # attention channels -> their map, head by head
        for child_name, module_child in module.named_children():
            if child_name in spec.fused and module_child is not None:
                fused = cast(nn.Linear, module_child)  # a fused projection is a Linear (HeadSpec.fused)
                segments = spec.fused[child_name]
                size = fused.out_features // segments
                segment = head_maps.setdefault(size, ctx.plan.map(size, block=_head_dim(module, size)))
                in_map = ctx.in_map(fused.in_features, -1)
                layers[child_name] = expand_linear_with_maps(fused, in_map, concat_maps([segment] * segments))
        for child_name, child in module.named_children():
            if child_name in layers:
                continue
            if child_name in spec.reads_heads and isinstance(child, nn.Linear) and child.in_features in head_maps:
                out_map = ctx.out_map(child.out_features, -1)
                layers[child_name] = expand_linear_with_maps(child, head_maps[child.in_features], out_map)
            else:
                layers[child_name] = expand_subtree(child, ctx, f"{ctx.name}.{child_name}")
        layers = {name: layers[name] for name, _ in module.named_children()}  # the module's own order
        new = _copy_with_children(module, {n: layer.module for n, layer in layers.items()})
        params = {f"{n}.{p}": s for n, layer in layers.items() for p, s in layer.params.items()}
        own = dict(module.named_parameters(recurse=False))
        for name, axis in spec.head_tensors.items():
            value = getattr(module, name, None)
            if value is None:
                continue
            head_map = ctx.plan.map(value.shape[axis])
            _set(new, name, head_map.expand(value, axis % value.ndim), name in own)
            if name in own:
                params[name] = ParamSlice({axis % value.ndim: head_map})
        for name in spec.channel_tensors:
            value = getattr(module, name, None)
            if value is None:
                continue
            channel_map = head_maps.get(value.shape[0]) or ctx.plan.map(
                value.shape[0], block=_head_dim(module, value.shape[0])
            )
            _set(new, name, channel_map.expand(value, 0), name in own)
            if name in own:  # a bias of the fused projection: as that bias (docs/method.md)
                params[name] = ParamSlice({0: channel_map}, paper_scale=paper_bias_scale(channel_map))
        for attr in spec.scaled_attrs:
            if isinstance(getattr(module, attr, None), int):
                setattr(new, attr, getattr(module, attr) * ratio)
        for attr in spec.caches:
            if isinstance(getattr(new, attr, None), dict):
                setattr(new, attr, {})
        missing = [n for n in own if n not in params]
        if missing:
            raise ctx.error(module, f"the attention rule does not know its tensors {', '.join(missing)}")
        return ExpandedLayer(new, params)

    return expand_head_attention


def _set(module: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    if parameter:
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=getattr(module, name).requires_grad))
    else:
        setattr(module, name, value.detach().clone())


def expand_multihead_attention(module: nn.MultiheadAttention, ctx: LayerContext) -> ExpandedLayer:
    """torch's MultiheadAttention (torchvision's ViT): in_proj per q/k/v segment, r times the heads."""
    if not module._qkv_same_embed_dim or module.bias_k is not None:
        raise ctx.error(module, "only a MultiheadAttention with one in_proj and no bias_k/bias_v is supported")
    if not ctx.plan.is_integer:
        raise ctx.error(module, f"ratio {ctx.plan.ratio} would split attention heads; use an integer ratio")
    dim = module.embed_dim
    in_map, segment = ctx.in_map(dim, -1), ctx.plan.map(dim, block=module.head_dim)
    out_map = concat_maps([segment] * 3)
    weight = in_map.expand(out_map.expand(module.in_proj_weight, 0), 1, divide=True)
    tensors = {"in_proj_weight": weight}
    params = {
        "in_proj_weight": ParamSlice(
            {0: out_map, 1: in_map}, divided_dim=1, paper_scale=paper_weight_scale(in_map, out_map)
        )
    }
    if module.in_proj_bias is not None:
        tensors["in_proj_bias"] = out_map.expand(module.in_proj_bias, 0)
        params["in_proj_bias"] = ParamSlice({0: out_map}, paper_scale=paper_bias_scale(out_map))
    proj = expand_linear_with_maps(module.out_proj, segment, ctx.out_map(module.out_proj.out_features, -1))
    new = _copy_with_children(module, {"out_proj": proj.module})
    for name, value in tensors.items():
        _set(new, name, value, True)
    ratio = int(ctx.plan.ratio)
    new.embed_dim, new.kdim, new.vdim, new.num_heads = (
        dim * ratio,
        module.kdim * ratio,
        module.vdim * ratio,
        module.num_heads * ratio,
    )
    params.update({f"out_proj.{p}": s for p, s in proj.params.items()})
    return ExpandedLayer(new, params, output_map=proj.output_map)


def register_head_attention(module_class: type[nn.Module], spec: HeadSpec) -> None:
    """Register ``spec``'s rule for an attention class."""
    register_expansion_rule(module_class, head_attention_rule(spec))


def register_known_attentions() -> None:
    """torch's MultiheadAttention now; timm's and torchvision's attention classes once
    their package is imported (:func:`gpd.expansion.rules.register_when_imported`)."""
    register_expansion_rule(nn.MultiheadAttention, expand_multihead_attention)
    register_when_imported("timm", register_timm_attentions)
    register_when_imported("torchvision", register_torchvision_attentions)


def register_timm_attentions() -> None:
    """The attention classes of timm that carry per-head tables."""
    try:
        from timm.models import (
            beit,
            cait,
            edgenext,
            efficientformer,
            efficientformer_v2,
            eva,
            levit,
            metaformer,
            pvt_v2,
            swin_transformer,
            tiny_vit,
            twins,
            xcit,
        )
    except ImportError:
        timm_specs = []
    else:
        qkv = {"qkv": 3}
        biases = ("q_bias", "k_bias", "v_bias")
        table = {"relative_position_bias_table": 1}
        leaky = HeadSpec(
            head_tensors={"attention_biases": 0},
            scaled_attrs=("num_heads", "val_attn_dim", "dh"),
            caches=("attention_bias_cache",),
        )
        timm_specs = [
            (swin_transformer.WindowAttention, HeadSpec(qkv, table)),
            (beit.Attention, HeadSpec(qkv, table, biases)),
            (eva.EvaAttention, HeadSpec(qkv, {}, biases)),
            (xcit.XCA, HeadSpec(qkv, {"temperature": 0})),
            (edgenext.CrossCovarianceAttn, HeadSpec(qkv, {"temperature": 0})),
            (levit.Attention, leaky),
            (metaformer.Attention, HeadSpec(qkv, scaled_attrs=("num_heads", "attention_dim"))),
            # qkv is laid out head by head ([q k v] of head 0, then head 1, ...): a plain tile copies whole heads
            (
                tiny_vit.Attention,
                HeadSpec(
                    head_tensors={"attention_biases": 0},
                    scaled_attrs=("num_heads", "out_dim"),
                    caches=("attention_bias_cache",),
                ),
            ),
            (levit.AttentionDownsample, leaky),
            (efficientformer.Attention, leaky),
            (efficientformer_v2.Attention2d, leaky),
            (efficientformer_v2.Attention2dDownsample, leaky),
            (pvt_v2.Attention, HeadSpec({"kv": 2})),
            (twins.LocallyGroupedAttn, HeadSpec(qkv)),
            (twins.GlobalSubSampleAttn, HeadSpec({"kv": 2})),
            (cait.TalkingHeadAttn, HeadSpec(qkv)),
            (cait.ClassAttn, HeadSpec()),
            (xcit.ClassAttn, HeadSpec()),
        ]
    for module_class, spec in dict(timm_specs).items():  # once per class: xcit's ClassAttn is cait's in timm 1.x
        register_head_attention(module_class, spec)


def register_torchvision_attentions() -> None:
    """torchvision's Swin attention and its ViT's hidden size."""
    try:
        from torchvision.models import swin_transformer as tv_swin
        from torchvision.models import vision_transformer as tv_vit
    except ImportError:
        return
    register_channel_attributes(tv_vit.VisionTransformer, ("hidden_dim",))
    register_head_attention(tv_swin.ShiftedWindowAttention, HeadSpec({"qkv": 3}, {"relative_position_bias_table": 1}))


def expand_glu_mlp(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """timm's GluMlp: ``fc1`` writes ``[x, gate]`` and ``forward()`` chunks it in two.

    ``fc1`` is expanded per half, as a fused qkv is per segment (``[x, x, g, g]``), so
    each half of D's output is the tiled copy of the student's half; the other layers
    keep their own rules. (A Conv2d ``fc1``, ``use_conv=True``, is left to the
    interleaved layout.)"""
    if not isinstance(module.fc1, nn.Linear):
        raise ctx.error(module, "a GluMlp with a conv fc1 is expanded in the interleaved layout")
    half = ctx.plan.map(module.fc1.out_features // 2)
    layers = {
        "fc1": expand_linear_with_maps(module.fc1, ctx.in_map(module.fc1.in_features, -1), concat_maps([half, half]))
    }
    for child_name, child in module.named_children():
        if child_name != "fc1":
            layers[child_name] = expand_subtree(child, ctx, f"{ctx.name}.{child_name}")
    new = _copy_with_children(module, {n: layer.module for n, layer in layers.items()})
    params = {f"{n}.{p}": s for n, layer in layers.items() for p, s in layer.params.items()}
    fc2 = layers.get("fc2")
    return ExpandedLayer(new, params, output_map=fc2.output_map if fc2 is not None else None)


def register_fused_mlps() -> None:
    """MLPs whose first layer writes two halves that ``forward()`` splits (timm's GluMlp: SwiGLU, GeGLU)."""
    try:
        from timm.layers.mlp import GluMlp
    except ImportError:
        return
    register_expansion_rule(GluMlp, expand_glu_mlp)
