"""Expansion rules for the text architectures of Hugging Face transformers.

Attention keeps its head size and multiplies its heads by r, as for timm's (docs/method.md):
D's query head ``j + H`` copies the student's head ``j`` (``2j`` and ``2j + 1`` copy ``j`` in the
interleaved layout), and with grouped-query attention its key/value heads are r times the
student's in the same pattern, so every copy of a query head reads a copy of its own key/value
head (the group size is unchanged). What ``forward()`` reads to split heads is D's: the size
attributes (``num_heads``, ``split_size``, ...) and, where ``forward()`` reads head counts from
the config (Phi-3), a copy of the config holding D's counts. Rotary embeddings act on the head
size, which D keeps: their tables are unchanged.

* Fused projections are expanded segment by segment (``[q..q, k..k, v..v]``): GPT-2's ``c_attn``,
  Phi-3's ``qkv_proj`` (segments of different sizes with GQA), ModernBERT's ``Wqkv``, and the
  two halves of the gated MLPs (Phi-3's ``gate_up_proj``, ModernBERT's ``Wi``) that ``forward()``
  chunks.
* A norm over the head size (Qwen3's ``q_norm``/``k_norm``) is applied to every head alike; D
  keeps it unchanged. Its gradient in D sums over r times the heads, each reached through the
  ``W / r`` of the output projection: the student's gradient, so it steps as the student's.
* GPT-2's ``Conv1D`` is a Linear with its weight transposed ``(in, out)``.

Registered when transformers is imported (``gpd.expansion``); each family's rules once its
modeling module is imported, so ``import gpd`` imports neither.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

import torch
from torch import nn

from gpd.channel_maps import ChannelMap, concat_maps, identity_map
from gpd.expansion.rules import (
    ExpandedLayer,
    LayerContext,
    register_expansion_rule,
    register_when_imported,
    replace_tensors,
)
from gpd.expansion.torch_rules import expand_linear_with_maps, paper_bias_scale, paper_weight_scale
from gpd.sharing.param_slice import ParamSlice

Q, KV = "q", "kv"  # the segments of a projection: query heads, key/value heads


class Conv1D(Protocol):
    """What the rules read of transformers' Conv1D."""

    weight: torch.Tensor  # (nx, nf)
    bias: torch.Tensor
    nx: int
    nf: int


def expand_conv1d_with_maps(module: nn.Module, in_map: ChannelMap, out_map: ChannelMap) -> ExpandedLayer:
    """transformers' Conv1D (GPT-2): a Linear whose weight is ``(in, out)``; divided on the input axis, 0."""
    conv = cast(Conv1D, module)
    weight = in_map.expand(out_map.expand(conv.weight, 1), 0, divide=True)
    params = {"weight": weight, "bias": out_map.expand(conv.bias, 0)}
    slices = {
        "weight": ParamSlice(
            {0: in_map, 1: out_map},
            divided_dim=None if in_map.is_identity else 0,
            paper_scale=paper_weight_scale(in_map, out_map),
        ),
        "bias": ParamSlice({0: out_map}, paper_scale=paper_bias_scale(out_map)),
    }
    new = cast(Conv1D, replace_tensors(module, params))
    new.nx, new.nf = in_map.dynamic_size, out_map.dynamic_size
    return ExpandedLayer(cast(nn.Module, new), slices, output_map=out_map)


def expand_conv1d(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """Conv1D as a layer of its own (GPT-2's MLP): as a Linear, on the last axis."""
    conv = cast(Conv1D, module)
    in_map = ctx.in_map(conv.nx, -1)
    out_map = identity_map(conv.nf) if ctx.reads_other_axis(in_map) else ctx.out_map(conv.nf, -1)
    return expand_conv1d_with_maps(module, in_map, out_map)


def _projection(module: nn.Module, in_map: ChannelMap, out_map: ChannelMap) -> ExpandedLayer:
    if isinstance(module, nn.Linear):
        return expand_linear_with_maps(module, in_map, out_map)
    return expand_conv1d_with_maps(module, in_map, out_map)


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear or a Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    conv = cast(Conv1D, module)
    return conv.nx, conv.nf


@dataclass(frozen=True)
class HeadSizes:
    """The query channels, the key/value channels and the head size of one attention module."""

    query: int
    key_value: int
    head: int


def _sizes_from(head_attr: str, query: str, key: str | None = None) -> Callable[[nn.Module], HeadSizes]:
    """Sizes read off the head size attribute and the output sizes of the query (and key) projection;
    a fused projection (``query`` its name) holds the query segment first, then two equal k/v ones."""

    def sizes(module: nn.Module) -> HeadSizes:
        head: int = getattr(module, head_attr)
        out = _features(getattr(module, query))[1]
        if key is not None:
            return HeadSizes(out, _features(getattr(module, key))[1], head)
        heads = getattr(module, "num_key_value_heads", None)
        config = getattr(module, "config", None)
        query_heads = getattr(config, "num_attention_heads", None)
        if isinstance(heads, int) and isinstance(query_heads, int):  # Phi-3: [q | k | v] by head counts
            return HeadSizes(query_heads * head, heads * head, head)
        return HeadSizes(out // 3, out // 3, head)

    return sizes


class GPT2Sizes(Protocol):
    embed_dim: int
    head_dim: int


def _gpt2_sizes(module: nn.Module) -> HeadSizes:
    """GPT-2: ``embed_dim`` channels of queries, keys and values each (its cross-attention's too)."""
    attention = cast(GPT2Sizes, module)
    return HeadSizes(attention.embed_dim, attention.embed_dim, attention.head_dim)


@dataclass(frozen=True)
class AttentionSpec:
    """How one attention class lays out its heads.

    ``projections``: child -> its output segments (Q or KV); ``outputs``: children that read the
    heads' output; ``scaled``: int attributes that count heads or attention channels (times r);
    ``config_counts``: config attributes that ``forward()`` reads to split heads (D's module gets a
    copy of the config with them times r). Children named nowhere must hold no parameters, except
    norms over the head size (kept) or over a whole segment (tiled with it).
    """

    sizes: Callable[[nn.Module], HeadSizes]
    projections: dict[str, tuple[str, ...]]
    outputs: tuple[str, ...] = ()
    scaled: tuple[str, ...] = ()
    config_counts: tuple[str, ...] = ()


def _keep(module: nn.Module) -> ExpandedLayer:
    return ExpandedLayer(copy.deepcopy(module), {name: ParamSlice({}) for name, _ in module.named_parameters()})


def _norm_over(
    module: nn.Module, ctx: LayerContext, name: str, maps: dict[int, ChannelMap], head: int
) -> ExpandedLayer:
    """A norm inside attention: kept over the head size, tiled with its segment over a whole segment."""
    params = dict(module.named_parameters())
    sizes = {int(p.shape[-1]) for p in params.values()}
    if len(sizes) != 1 or any(p.ndim != 1 for p in params.values()):
        raise ctx.error(module, f"'{name}' holds tensors the attention rule does not know")
    size = sizes.pop()
    if size == head or size not in maps:
        return _keep(module)  # over the head size, which D keeps (a single head's too)
    channel_map = maps[size]
    new = replace_tensors(module, {n: channel_map.expand(p, 0) for n, p in params.items()})
    for attr in ("normalized_shape", "hidden_size", "dim"):
        value = getattr(module, attr, None)
        if value == size or value == (size,):
            setattr(new, attr, (channel_map.dynamic_size,) if isinstance(value, tuple) else channel_map.dynamic_size)
    return ExpandedLayer(new, {n: ParamSlice({0: channel_map}) for n in params})


def _with_children(module: nn.Module, children: dict[str, nn.Module]) -> nn.Module:
    """A deep copy of ``module`` whose named children are replaced (they are not copied)."""
    new = copy.deepcopy(module, {id(getattr(module, name)): None for name in children})
    for name, child in children.items():
        setattr(new, name, child)
    return new


def _scaled_config(config: Any, names: tuple[str, ...], ratio: int) -> Any:
    """A copy of ``config`` with the given counts times ``ratio`` (the model's own config is untouched)."""
    new = copy.deepcopy(config)
    for name in names:
        setattr(new, name, getattr(config, name) * ratio)
    return new


def attention_rule(spec: AttentionSpec) -> Callable[[nn.Module, LayerContext], ExpandedLayer]:
    """The expansion rule of an attention class described by ``spec``."""

    def expand_text_attention(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
        if not ctx.plan.is_integer:
            raise ctx.error(module, f"ratio {ctx.plan.ratio} would split attention heads; use an integer ratio")
        if not (ctx.expand_input and ctx.expand_output):
            raise ctx.error(module, "attention that reads the input or writes the output is not supported")
        sizes = spec.sizes(module)
        segment = {
            Q: ctx.plan.map(sizes.query, block=sizes.head),
            KV: ctx.plan.map(sizes.key_value, block=sizes.head),
        }
        layers: dict[str, ExpandedLayer] = {}
        for name, kinds in spec.projections.items():
            child = getattr(module, name, None)
            if child is not None:
                size_in, size_out = _features(child)
                while kinds and sum(segment[k].student_size for k in kinds) > size_out:
                    kinds = kinds[1:]  # GPT-2's cross-attention c_attn writes k and v only
                if sum(segment[k].student_size for k in kinds) != size_out:
                    raise ctx.error(module, f"'{name}' writes {size_out} channels, not its segments {kinds}")
                layers[name] = _projection(child, ctx.in_map(size_in, -1), concat_maps([segment[k] for k in kinds]))
        for name in spec.outputs:
            child = getattr(module, name)
            layers[name] = _projection(child, segment[Q], ctx.out_map(_features(child)[1], -1))
        maps = {m.student_size: m for m in segment.values()}
        for name, child in module.named_children():
            if name in layers:
                continue
            if any(True for _ in child.parameters()):
                layers[name] = _norm_over(child, ctx, f"{ctx.name}.{name}", maps, sizes.head)
            else:
                layers[name] = ExpandedLayer(copy.deepcopy(child), {})
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own:
            raise ctx.error(module, f"the attention rule does not know its tensors {', '.join(own)}")
        layers = {name: layers[name] for name, _ in module.named_children()}  # the module's own order
        new = _with_children(module, {name: layer.module for name, layer in layers.items()})
        ratio = int(ctx.plan.ratio)
        for attr in spec.scaled:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(new, attr, value * ratio)
        if spec.config_counts:
            new.config = _scaled_config(module.config, spec.config_counts, ratio)
        params = {f"{n}.{p}": s for n, layer in layers.items() for p, s in layer.params.items()}
        output = next((layers[n].output_map for n in spec.outputs), segment[Q])
        return ExpandedLayer(new, params, output_map=output)

    return expand_text_attention


def gated_mlp_rule(fused: str, reads: str) -> Callable[[nn.Module, LayerContext], ExpandedLayer]:
    """The rule of a gated MLP whose ``fused`` child writes the two halves and ``reads`` reads them."""

    def expand_gated_mlp(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
        return expand_gated_halves(module, ctx, fused, reads)

    return expand_gated_mlp


def expand_gated_halves(module: nn.Module, ctx: LayerContext, fused: str, reads: str) -> ExpandedLayer:
    """A gated MLP whose first layer writes two halves that ``forward()`` chunks (Phi-3, ModernBERT):
    expanded per half (``[g..g, u..u]``), so each half of D's output is the copy of the student's."""
    first, second = getattr(module, fused), getattr(module, reads)
    half = ctx.plan.map(_features(first)[1] // 2)
    layers = {
        fused: _projection(first, ctx.in_map(_features(first)[0], -1), concat_maps([half, half])),
        reads: _projection(second, half, ctx.out_map(_features(second)[1], -1)),
    }
    for name, child in module.named_children():
        if name not in layers:
            if any(True for _ in child.parameters()):
                raise ctx.error(module, f"'{name}' holds tensors the gated MLP rule does not know")
            layers[name] = ExpandedLayer(copy.deepcopy(child), {})
    layers = {name: layers[name] for name, _ in module.named_children()}
    new = _with_children(module, {name: layer.module for name, layer in layers.items()})
    params = {f"{n}.{p}": s for n, layer in layers.items() for p, s in layer.params.items()}
    return ExpandedLayer(new, params, output_map=layers[reads].output_map)


LLAMA_LIKE = AttentionSpec(
    sizes=_sizes_from("head_dim", "q_proj", "k_proj"),
    projections={"q_proj": (Q,), "k_proj": (KV,), "v_proj": (KV,)},
    outputs=("o_proj",),
)

# modeling module -> (class name, spec) of its attention; gated MLPs: class name -> (fused, reads)
ATTENTIONS: dict[str, list[tuple[str, AttentionSpec]]] = {
    "transformers.models.llama.modeling_llama": [("LlamaAttention", LLAMA_LIKE)],
    "transformers.models.mistral.modeling_mistral": [("MistralAttention", LLAMA_LIKE)],
    "transformers.models.qwen2.modeling_qwen2": [("Qwen2Attention", LLAMA_LIKE)],
    "transformers.models.qwen3.modeling_qwen3": [("Qwen3Attention", LLAMA_LIKE)],
    "transformers.models.gemma.modeling_gemma": [("GemmaAttention", LLAMA_LIKE)],
    "transformers.models.phi3.modeling_phi3": [
        (
            "Phi3Attention",
            AttentionSpec(
                sizes=_sizes_from("head_dim", "qkv_proj"),
                projections={"qkv_proj": (Q, KV, KV)},
                outputs=("o_proj",),
                scaled=("num_key_value_heads",),
                config_counts=("num_attention_heads", "num_key_value_heads"),
            ),
        )
    ],
    "transformers.models.gpt2.modeling_gpt2": [
        (
            "GPT2Attention",
            AttentionSpec(
                sizes=_gpt2_sizes,
                projections={"c_attn": (Q, KV, KV), "q_attn": (Q,)},
                outputs=("c_proj",),
                scaled=("embed_dim", "num_heads", "split_size"),
            ),
        )
    ],
    "transformers.models.modernbert.modeling_modernbert": [
        (
            "ModernBertAttention",
            AttentionSpec(sizes=_sizes_from("head_dim", "Wqkv"), projections={"Wqkv": (Q, KV, KV)}, outputs=("Wo",)),
        )
    ],
    "transformers.models.deberta_v2.modeling_deberta_v2": [
        (
            "DisentangledSelfAttention",
            AttentionSpec(
                sizes=_sizes_from("attention_head_size", "query_proj", "key_proj"),
                projections={
                    "query_proj": (Q,),
                    "key_proj": (KV,),
                    "value_proj": (KV,),
                    "pos_key_proj": (KV,),  # reads the relative embeddings, tiled as the hidden states
                    "pos_query_proj": (Q,),
                },
                scaled=("num_attention_heads", "all_head_size"),
            ),
        )
    ],
}
GATED_MLPS: dict[str, list[tuple[str, str, str]]] = {
    "transformers.models.phi3.modeling_phi3": [("Phi3MLP", "gate_up_proj", "down_proj")],
    "transformers.models.modernbert.modeling_modernbert": [("ModernBertMLP", "Wi", "Wo")],
}


def _register_family(module_name: str) -> None:
    import importlib

    modeling = importlib.import_module(module_name)
    for class_name, spec in ATTENTIONS.get(module_name, []):
        register_expansion_rule(getattr(modeling, class_name), attention_rule(spec))
    for class_name, fused, reads in GATED_MLPS.get(module_name, []):
        register_expansion_rule(getattr(modeling, class_name), gated_mlp_rule(fused, reads))


def register_transformers_text_rules() -> None:
    """Conv1D now; each family's attention and MLP once its modeling module is imported."""
    from transformers.pytorch_utils import Conv1D

    register_expansion_rule(Conv1D, expand_conv1d)
    for module_name in sorted(set(ATTENTIONS) | set(GATED_MLPS)):
        register_when_imported(module_name, partial(_register_family, module_name))
