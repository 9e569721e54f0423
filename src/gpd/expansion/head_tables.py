"""Per-head tensors: tables with one entry per attention head, declared by their head axis.

D multiplies the number of attention heads by r and keeps the head size; head ``j`` of D
copies the student's head ``j mod H`` (docs/method.md). A tensor with one entry per head
(Swin's and BEiT's relative position bias tables, shape ``(offsets, heads)``; LeViT's
attention biases, ``(heads, offsets)``; Swinv2's logit scales, ``(heads, 1, 1)``) is
therefore tiled on its head axis, never divided: it is added to or multiplies the
attention logits of each head, nothing sums over it. A small MLP that computes such a
table from fixed coordinates (Swinv2's continuous position bias) keeps its hidden
width; its last Linear writes one value per head, so its rows are tiled the same way.
Attributes that count heads or attention channels and that ``forward()`` reshapes with
(``num_attention_heads``, ``all_head_size``) are multiplied by r.

A class declares all that once with :func:`register_head_tensors`; its modules are then
expanded as one unit: their own tensors as declared, their children by their own rules
(both sides expanded), their declared counts multiplied.

Steps (docs/method.md, "Per-layer steps"): every tensor here lives inside the attention
core, where the paper's layout keeps the student's scale (the core is wrapped), and none
of them reads an expanded axis. The paper's D holds them tiled as D does:
``paper_scale = 1``, so the student steps as the plain student and D as the plain wide
network, under both step rules.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from gpd.channel_maps import ChannelMap, identity_map
from gpd.expansion.heads import expand_subtree
from gpd.expansion.rules import ExpandedLayer, LayerContext, register_expansion_rule
from gpd.sharing.param_slice import ParamSlice


@dataclass(frozen=True)
class HeadTensors:
    """What one module class holds per attention head (see :func:`register_head_tensors`)."""

    axes: Mapping[str, int] = field(default_factory=dict)  # own tensor -> its head axis
    head_mlps: tuple[str, ...] = ()  # children: MLPs from fixed inputs to one value per head
    head_counts: tuple[str, ...] = ()  # int attributes that count heads or attention channels
    caches: tuple[str, ...] = ()  # dict attributes caching values read off the tensors: emptied


def _tiled_parameter(value: nn.Parameter | object, head_map: ChannelMap, axis: int) -> nn.Parameter:
    assert isinstance(value, nn.Parameter)
    tiled = head_map.expand(value.detach(), axis).clone()
    return nn.Parameter(tiled, requires_grad=value.requires_grad)


def expand_head_mlp(mlp: nn.Module, ctx: LayerContext, name: str) -> ExpandedLayer:
    """An MLP from fixed inputs to one value per head: its last Linear's rows tiled per head,
    everything before it kept (its hidden width is no channel count of the model)."""
    linears = [(n, m) for n, m in mlp.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ctx.error(mlp, f"'{name}' is declared a per-head MLP but holds no Linear")
    last_name, last = linears[-1]
    new = copy.deepcopy(mlp)
    target = new.get_submodule(last_name) if last_name else new
    assert isinstance(target, nn.Linear)
    head_map = ctx.plan.map(last.out_features)
    prefix = f"{last_name}." if last_name else ""
    params = {n: ParamSlice({}) for n, _ in mlp.named_parameters()}  # kept: the student reads all of it
    target.weight = _tiled_parameter(last.weight, head_map, 0)
    params[f"{prefix}weight"] = ParamSlice({0: head_map, 1: identity_map(last.in_features)})
    if last.bias is not None:
        target.bias = _tiled_parameter(last.bias, head_map, 0)
        params[f"{prefix}bias"] = ParamSlice({0: head_map})
    target.out_features = head_map.dynamic_size
    return ExpandedLayer(new, params, output_map=head_map)


@dataclass(frozen=True)
class ExpandHeadTensors:
    """The expansion rule of a module class that holds what ``spec`` declares (equal specs, equal rules:
    registering the same declaration again is a no-op)."""

    spec: HeadTensors

    def __call__(self, module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
        spec = self.spec
        if not ctx.plan.is_integer:
            raise ctx.error(module, f"ratio {ctx.plan.ratio} would split attention heads; use an integer ratio")
        ratio = int(ctx.plan.ratio)
        layers: dict[str, ExpandedLayer] = {}
        for child_name, child in module.named_children():
            sub_name = f"{ctx.name}.{child_name}"
            if child_name in spec.head_mlps:
                layers[child_name] = expand_head_mlp(child, ctx, sub_name)
            elif not (ctx.expand_input and ctx.expand_output):
                raise ctx.error(module, "attention that reads the input or writes the output is not supported")
            else:
                layers[child_name] = expand_subtree(child, ctx, sub_name)
        memo = {id(getattr(module, n)): None for n in layers}  # replaced children are not copied
        new = copy.deepcopy(module, memo)
        for child_name, layer in layers.items():
            setattr(new, child_name, layer.module)
        params = {f"{n}.{p}": s for n, layer in layers.items() for p, s in layer.params.items()}
        own = dict(module.named_parameters(recurse=False))
        for name, axis in spec.axes.items():
            value = getattr(module, name, None)
            if value is None:
                continue
            dim = axis % value.ndim
            head_map = ctx.plan.map(value.shape[dim])
            if name in own:
                setattr(new, name, _tiled_parameter(value, head_map, dim))
                params[name] = ParamSlice({dim: head_map})  # paper_scale 1: see the module docstring
            else:
                setattr(new, name, head_map.expand(value, dim).detach().clone())
        undeclared = [n for n in own if n not in params]
        if undeclared:
            raise ctx.error(module, f"tensors {', '.join(undeclared)} are not declared per head")
        for attr in spec.head_counts:
            count = getattr(module, attr, None)
            if not isinstance(count, int) or isinstance(count, bool):
                raise ctx.error(module, f"the head count '{attr}' is {count!r}, not an int")
            setattr(new, attr, count * ratio)
        for attr in spec.caches:
            if isinstance(getattr(new, attr, None), dict):
                setattr(new, attr, {})
        output_maps = [layer.output_map for layer in layers.values() if layer.output_map is not None]
        return ExpandedLayer(new, params, output_map=output_maps[-1] if output_maps else None)


def register_head_tensors(
    module_class: type[nn.Module],
    axes: Mapping[str, int] | None = None,
    *,
    head_mlps: tuple[str, ...] = (),
    head_counts: tuple[str, ...] = (),
    caches: tuple[str, ...] = (),
    override: bool = False,
) -> None:
    """Declare what ``module_class`` holds per attention head, and expand it as one unit.

    ``axes`` maps each of its own per-head tensors to its head axis (``{"relative_position_bias_table": 1}``
    for a ``(offsets, heads)`` table); D tiles it there. ``head_mlps`` names children that compute a
    per-head table from fixed inputs (their last Linear's rows are tiled, the rest kept);
    ``head_counts`` names int attributes that count heads or attention channels (multiplied by r);
    ``caches`` names dict attributes that cache values read off the tables (emptied in D). Every
    other child is expanded by its own rule. A parameter of the class's own that is not declared
    is refused. The conflict policy is that of :func:`gpd.expansion.register_expansion_rule`.
    """
    spec = HeadTensors(dict(axes or {}), tuple(head_mlps), tuple(head_counts), tuple(caches))
    register_expansion_rule(module_class, ExpandHeadTensors(spec), override=override)
