"""The registry of expansion rules: how each layer type becomes its wide copy in D.

A rule receives the student's module and a :class:`LayerContext` (its name, the width
plan, and whether its input and output axes are expanded). It returns an
:class:`ExpandedLayer`: D's module, built by copying the student's module and
replacing its tensors and size attributes (never by calling a constructor, so
subclasses such as timm's ``BatchNormAct2d`` keep working), and for every parameter
a :class:`ParamSlice` that says how the student's value is read back out of D's.

Users add rules for their own layers with :func:`register_expansion_rule`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from gpd.errors import ExpansionError
from gpd.expansion.channels import ChannelMap, WidthPlan, identity_map
from gpd.expansion.layout import MeasuredInput


@dataclass(frozen=True)
class LayerContext:
    """What a rule needs to know about the layer it expands.

    ``measured`` is the layout of the layer's input in D, measured while D is built
    (:mod:`gpd.expansion.layout`); ``in_map`` returns it where it describes the axis
    asked for, the tiled map otherwise. A ``channelwise`` layer's output keeps its
    input's layout, so its ``out_map`` is the measured one too.
    """

    name: str
    plan: WidthPlan
    expand_input: bool = True
    expand_output: bool = True
    measured: MeasuredInput | None = None
    channelwise: bool = False
    known_counts: frozenset[int] = frozenset()  # channel counts of the model's expanded axes

    def _measured(self, size: int, dim: int | None) -> ChannelMap | None:
        return self.measured.along(size, dim) if self.measured is not None else None

    def in_map(self, size: int, dim: int | None = None) -> ChannelMap:
        if self.expand_input:
            measured = self._measured(size, dim)
            if measured is not None:
                return measured
        return self.plan.map(size) if self.expand_input else identity_map(size)

    def out_map(self, size: int, dim: int | None = None) -> ChannelMap:
        if self.channelwise and self.expand_output:
            measured = self._measured(size, dim)
            if measured is not None:
                return measured
        return self.plan.map(size) if self.expand_output else identity_map(size)

    def reads_other_axis(self, in_map: ChannelMap) -> bool:
        """Whether a mixing layer meant to read expanded channels reads an unexpanded axis
        of an expanded tensor (MLP-Mixer's token MLP): then its output is not expanded either."""
        return bool(
            self.expand_input and in_map.is_identity and self.measured is not None and self.measured.maps
            and self.plan.teacher_size(in_map.student_size) != in_map.student_size
        )

    def error(self, module: nn.Module, why: str) -> ExpansionError:
        return ExpansionError(f"layer '{self.name}' ({type(module).__name__}): {why}")


@dataclass(eq=False)
class ParamSlice:
    """How a student parameter is read out of the matching parameter of D.

    ``dims`` maps each expanded axis to its channel map; the student's value is D's
    tensor restricted to the student's channels on those axes, multiplied by the
    number of copies on ``divided_dim`` (the axis whose copies D divided by that
    number, so that reading all of them sums to the student's value).

    ``paper_scale`` relates D's tensor to the paper's parameterisation of D (the
    authors' layout, whose activations are ``h / r`` per copy): there the tensor holds
    ``paper_scale`` times the value it holds here. It is 1/r on the layer that reads
    the image and on the bias of every ungrouped conv/linear whose output is expanded,
    r on the layer that writes the logits, 1/r on tokens and position embeddings, and 1
    elsewhere. An SGD step taken in the paper's coordinates equals one taken here with
    the loss gradient multiplied by ``1 / paper_scale**2`` (docs/method.md, "Per-layer
    steps"); :mod:`gpd.sharing.steps` applies that.
    """

    dims: dict[int, ChannelMap] = field(default_factory=dict)
    divided_dim: int | None = None
    paper_scale: float = 1.0
    _scales: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(
        default_factory=dict, repr=False
    )

    def derive(self, teacher_tensor: torch.Tensor, compensate_step: bool = False) -> torch.Tensor:
        """The student's tensor: a view of D's where no rescaling is needed.

        When the result takes part in autograd, it is read by :class:`_ReadBlock`
        instead: one copy forward, and a backward that writes the student's gradient
        straight into a zero tensor laid out like D's parameter (see there).

        ``compensate_step``: the student's value is ``scale * theta``, so its gradient
        reaches ``theta`` multiplied by ``scale`` and an SGD step moves the student's
        value by ``scale**2`` times the plain step (docs/method.md). With True the
        gradient is divided by ``scale`` instead (same forward value), which removes
        that factor; tensors without a divided axis are unaffected.
        """
        if torch.is_grad_enabled() and teacher_tensor.requires_grad:
            read = self._block_reader()
            if read is not None:
                prefix, index_dim, index = read
                scale = self._scale(teacher_tensor) if self.divided_dim is not None else None
                grad_scale = 1 / scale if compensate_step and scale is not None else scale
                if index is not None:
                    index = index.to(teacher_tensor.device)
                return _ReadBlock.apply(teacher_tensor, prefix, index_dim, index, scale, grad_scale)
        out = teacher_tensor
        for dim, channel_map in self.dims.items():
            out = channel_map.select(out, dim)
        if self.divided_dim is not None:
            scale = self._scale(out)
            if compensate_step and out.requires_grad:
                # forward: scale * out; backward: the gradient divided by scale
                return out / scale + (out * scale - out / scale).detach()
            out = out * scale
        return out

    def _block_reader(self) -> tuple[tuple[tuple[int, int], ...], int | None, torch.Tensor | None] | None:
        """``(prefix narrows, index dim, index)`` for :class:`_ReadBlock`; None if more than one axis needs an index."""
        prefix, indexed = [], []
        for dim, channel_map in self.dims.items():
            if channel_map.is_identity:
                continue  # the whole axis: no narrow (torch.compile's functionalization then drops the
                # backward's scale on the block written through a narrow of the full axis; tested)
            if channel_map.student_is_prefix:
                prefix.append((dim, channel_map.student_size))
            else:
                indexed.append((dim, channel_map.student_index))
        if len(indexed) > 1:
            return None
        index_dim, index = indexed[0] if indexed else (None, None)
        return tuple(prefix), index_dim, index

    def _scale(self, like: torch.Tensor) -> torch.Tensor | float:
        channel_map = self.dims[self.divided_dim]  # type: ignore[index]
        if channel_map.uniform_count is not None:
            return float(channel_map.uniform_count)
        key = (like.device, like.dtype)
        if key not in self._scales:
            self._scales[key] = channel_map.student_scale(self.divided_dim, like.ndim, like)  # type: ignore[arg-type,assignment]
        return self._scales[key]

    def student_mask(self, teacher_shape: torch.Size) -> torch.Tensor:
        """Boolean mask over D's tensor, True where the student's entries live."""
        mask = torch.ones(teacher_shape, dtype=torch.bool)
        for dim, channel_map in self.dims.items():
            along = torch.zeros(teacher_shape[dim], dtype=torch.bool)
            along[channel_map.student_index] = True
            shape = [1] * len(teacher_shape)
            shape[dim] = -1
            mask = mask & along.view(shape)
        return mask


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format ``tensor`` is dense in (contiguous unless it is only channels_last)."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if tensor.dim() == 5 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


class _ReadBlock(torch.autograd.Function):
    """The student's block of a D tensor (prefix narrows, at most one index), times a scale.

    The backward multiplies the block's gradient by ``grad_scale``: the same ``scale``
    for the true derivative, its reciprocal to remove the r² step (ParamSlice.derive).

    Same values as narrowing, selecting and scaling with ordinary ops, but the backward
    pass allocates one zero gradient in the memory format of D's parameter (so autograd
    stores it as ``.grad`` or adds it without a layout copy) and writes the scaled
    gradient of the block into it once. Chained slice backwards instead zero-fill and
    copy once per sliced axis, and in channels_last each gradient is copied once more
    into the parameter's layout (ResNet-18, channels_last, CPU: the student's forward +
    backward through the view fell from 1.27 to 1.10 times a plain student's; see
    docs/SPEED.md).
    """

    @staticmethod
    def forward(ctx, teacher, prefix, index_dim, index, scale, grad_scale):  # type: ignore[override]
        block = teacher
        for dim, size in prefix:
            block = block.narrow(dim, 0, size)
        if index is not None:
            block = block.index_select(index_dim, index)
        if scale is not None:
            out = block * scale
        elif index is None:
            out = block.clone(memory_format=torch.preserve_format)
        else:
            out = block
        ctx.shape, ctx.format = teacher.shape, _memory_format(teacher)
        ctx.prefix, ctx.index_dim, ctx.index, ctx.grad_scale = prefix, index_dim, index, grad_scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        full = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.format).zero_()
        block = full
        for dim, size in ctx.prefix:
            block = block.narrow(dim, 0, size)
        scale = ctx.grad_scale
        if ctx.index_dim is not None:
            block.index_copy_(ctx.index_dim, ctx.index, grad if scale is None else grad * scale)
        elif scale is None:
            block.copy_(grad)
        elif isinstance(scale, float):
            block.add_(grad, alpha=scale)
        else:
            torch.mul(grad, scale, out=block)
        return full, None, None, None, None, None


@dataclass
class ExpandedLayer:
    """A rule's result: D's module and how to derive each student parameter from it.

    ``params`` is keyed by parameter name relative to the module ("weight",
    "fc1.bias", ...). ``output_map`` describes D's output channels, used to compare
    D's activations with the student's when verification fails.
    """

    module: nn.Module
    params: dict[str, ParamSlice]
    output_map: ChannelMap | None = None


class ExpansionRule(Protocol):
    def __call__(self, module: nn.Module, ctx: LayerContext) -> ExpandedLayer: ...


@dataclass(frozen=True)
class RuleEntry:
    """A registered rule.

    ``channelwise`` rules keep the channel layout of their input (norms, activations):
    such a layer is left unexpanded where it sits before the layer that reads the
    image or after the layer that writes the logits.
    """

    rule: ExpansionRule
    channelwise: bool


_RULES: dict[type, RuleEntry] = {}
_CHANNEL_TENSORS: dict[type, dict[str, int]] = {}
_MULTIPLYING_TENSORS: dict[type, set[str]] = {}


def register_expansion_rule(
    module_class: type[nn.Module], rule: ExpansionRule, *, channelwise: bool = False
) -> None:
    """Register ``rule`` for ``module_class`` and its subclasses (the nearest class wins).

    A rule registered for a container class handles all of its submodules; the
    expansion does not descend into it.
    """
    if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
        raise TypeError(f"module_class must be an nn.Module subclass, got {module_class!r}")
    _RULES[module_class] = RuleEntry(rule=rule, channelwise=channelwise)


def register_channel_tensors(module_class: type[nn.Module], axes: dict[str, int], *, multiplies: bool = False) -> None:
    """Declare tensors a container holds directly (class token, position embedding, ...).

    ``axes`` maps each attribute name to its channel axis. D holds them tiled on that
    axis, not divided: they are added to or concatenated with activations, never
    summed over. ``multiplies=True`` declares tensors that scale an activation
    channel by channel instead (a layer-scale gamma): the paper's parameterisation
    holds those unchanged, while it divides added tensors by r (see ``ParamSlice.paper_scale``).
    """
    _CHANNEL_TENSORS[module_class] = dict(axes)
    _MULTIPLYING_TENSORS[module_class] = set(axes) if multiplies else set()


def channel_tensor_axes(module: nn.Module) -> dict[str, int]:
    """The declared channel axes of ``module``'s own tensors (from every class in its MRO)."""
    axes: dict[str, int] = {}
    for cls in reversed(type(module).__mro__):
        axes.update(_CHANNEL_TENSORS.get(cls, {}))
    return axes


def channel_tensor_multiplies(module: nn.Module, name: str) -> bool:
    """Whether the declared channel tensor ``name`` of ``module`` scales activations (else it is added to them)."""
    for cls in type(module).__mro__:
        if name in _CHANNEL_TENSORS.get(cls, {}):
            return name in _MULTIPLYING_TENSORS.get(cls, set())
    return False


def find_rule(module: nn.Module) -> RuleEntry | None:
    """The rule of the nearest registered class in ``module``'s MRO."""
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def replace_tensors(
    module: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """A deep copy of ``module`` with the given parameters and buffers replaced."""
    new = copy.deepcopy(module)
    for name, value in params.items():
        old = getattr(module, name)
        setattr(new, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    for name, value in (buffers or {}).items():
        setattr(new, name, value.detach().clone())
    return new


# --- built-in rules -------------------------------------------------------------------


def _copies(channel_map: ChannelMap) -> float:
    """How many times D's axis holds the student's (r; the plain ratio of sizes when uneven)."""
    return channel_map.teacher_size / channel_map.student_size


def paper_weight_scale(in_map: ChannelMap, out_map: ChannelMap) -> float:
    """``paper_scale`` of an ungrouped conv/linear weight (see :class:`ParamSlice`).

    gpd divides by the copies of the input axis; the paper's layout divides by the
    copies of the output axis. They agree where both or neither side is expanded.
    """
    return _copies(in_map) / _copies(out_map)


def paper_bias_scale(out_map: ChannelMap) -> float:
    """``paper_scale`` of an ungrouped conv/linear bias: the paper's layout divides it by the output copies."""
    return 1.0 / _copies(out_map)


def grouped_out_map(module: nn.Module, ctx: LayerContext, in_map: ChannelMap) -> ChannelMap | None:
    """The output layout of a grouped conv whose input has a measured (permuted) layout.

    Each of D's groups must read one whole student group, in order; its outputs are then
    that group's outputs, in order. None where the input does not split into whole groups.
    """
    in_per_group = module.in_channels // module.groups
    out_per_group = module.out_channels // module.groups
    if in_map.teacher_size % in_per_group:
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


def _check_groups(module: nn.Module, ctx: LayerContext, in_map: ChannelMap, out_map: ChannelMap) -> int:
    """The group count of D's grouped conv, after checking each D group copies one S group."""
    groups = module.groups
    in_per_group = module.in_channels // groups
    out_per_group = module.out_channels // groups
    if ctx.expand_input != ctx.expand_output:
        raise ctx.error(module, "a grouped convolution must have both or neither of its sides expanded")
    if in_map.teacher_size % in_per_group or out_map.teacher_size % out_per_group:
        raise ctx.error(
            module,
            f"ratio {ctx.plan.ratio} gives {in_map.teacher_size} channels, not a multiple of the "
            f"group width {in_per_group}; use an integer ratio",
        )
    new_groups = in_map.teacher_size // in_per_group
    if out_map.teacher_size // out_per_group != new_groups:
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
    if channel_map.teacher_size % groups:
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


def wide_group_maps(module: nn.Module, in_map: ChannelMap, out_map: ChannelMap) -> ChannelMap | None:
    """A grouped conv whose input holds each student group's copies side by side (interleaved).

    D keeps the student's group count, each group ``r`` times wider: every one of its
    outputs reads all copies of its group's inputs, divided by their number, like an
    ungrouped conv restricted to the group. Returns the within-group input map, or None
    where the layouts do not group that way.
    """
    groups = module.groups
    local_out = _local_map(out_map, groups, module.out_channels // groups)
    local_in = _local_map(in_map, groups, module.in_channels // groups)
    return local_in if local_out is not None else None


def _wide_group_input(module: nn.Module, ctx: LayerContext, in_map: ChannelMap, out_map: ChannelMap) -> ChannelMap | None:
    """The within-group input map of a grouped conv D keeps at the student's group count: in the
    interleaved layout, for groups wider than one channel (depthwise convs tile as before)."""
    if ctx.plan.layout != "interleaved" or module.in_channels == module.groups or not ctx.expand_input:
        return None
    return wide_group_maps(module, in_map, out_map)


def expand_conv(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """Conv1d/2d/3d: ungrouped convs divide by the input copies; grouped convs tile."""
    if getattr(module, "transposed", False):
        raise ctx.error(module, "transposed convolutions have no expansion rule yet")
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
        weight_slice = ParamSlice({0: out_map, 1: local_in}, divided_dim=1, paper_scale=paper_weight_scale(local_in, out_map))
        bias_scale = paper_bias_scale(out_map)
        groups = module.groups
    else:  # the paper's layout scales a grouped conv's input and output instead: same tensors as here
        groups = _check_groups(module, ctx, in_map, out_map)
        weight = out_map.expand(module.weight, 0)
        weight_slice = ParamSlice({0: out_map})
        bias_scale = 1.0
    params = {"weight": weight}
    slices = {"weight": weight_slice}
    if module.bias is not None:
        params["bias"] = out_map.expand(module.bias, 0)
        slices["bias"] = ParamSlice({0: out_map}, paper_scale=bias_scale)
    new = replace_tensors(module, params)
    new.in_channels, new.out_channels, new.groups = in_map.teacher_size, out_map.teacher_size, groups
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
    new.in_features, new.out_features = in_map.teacher_size, out_map.teacher_size
    return ExpandedLayer(new, slices, output_map=out_map)


def expand_linear(module: nn.Linear, ctx: LayerContext) -> ExpandedLayer:
    """Linear: like an ungrouped conv, on the last axis (kept as is where that axis is not expanded)."""
    in_map = ctx.in_map(module.in_features, -1)
    out_map = identity_map(module.out_features) if ctx.reads_other_axis(in_map) else ctx.out_map(module.out_features, -1)
    return expand_linear_with_maps(module, in_map, out_map)


def expand_batchnorm(module: nn.modules.batchnorm._NormBase, ctx: LayerContext) -> ExpandedLayer:
    """BatchNorm/InstanceNorm: per-channel affine and statistics are tiled."""
    channel_map = ctx.out_map(module.num_features, 1)
    params = {n: channel_map.expand(getattr(module, n), 0) for n in ("weight", "bias") if getattr(module, n) is not None}
    buffers = {
        n: channel_map.expand(getattr(module, n), 0)
        for n in ("running_mean", "running_var")
        if getattr(module, n, None) is not None
    }
    new = replace_tensors(module, params, buffers)
    new.num_features = channel_map.teacher_size
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
    params = {n: channel_map.expand(getattr(module, n), 0) for n in ("weight", "bias") if getattr(module, n, None) is not None}
    new = replace_tensors(module, params)
    new.normalized_shape = (channel_map.teacher_size,)
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
    params = {n: channel_map.expand(getattr(module, n), 0) for n in ("weight", "bias") if getattr(module, n) is not None}
    new = replace_tensors(module, params)
    new.num_channels, new.num_groups = channel_map.teacher_size, module.num_groups * count
    return ExpandedLayer(new, {n: ParamSlice({0: channel_map}) for n in params}, output_map=channel_map)


def expand_channel_vectors(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """Layers whose parameters are all per-channel vectors (layer scale, PReLU with C slopes)."""
    params, slices = {}, {}
    for name, param in module.named_parameters(recurse=False):
        if param.ndim != 1:
            raise ctx.error(module, f"parameter '{name}' of shape {tuple(param.shape)} is not a per-channel vector")
        channel_map = ctx.out_map(param.numel()) if param.numel() > 1 else identity_map(1)
        params[name] = channel_map.expand(param, 0)
        slices[name] = ParamSlice({0: channel_map})
    return ExpandedLayer(replace_tensors(module, params), slices)


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


def _register_builtin_rules() -> None:
    register_expansion_rule(nn.modules.conv._ConvNd, expand_conv)
    register_expansion_rule(nn.Linear, expand_linear)
    register_expansion_rule(nn.modules.batchnorm._NormBase, expand_batchnorm, channelwise=True)
    register_expansion_rule(nn.LayerNorm, expand_layernorm, channelwise=True)
    register_expansion_rule(nn.GroupNorm, expand_groupnorm, channelwise=True)
    register_expansion_rule(nn.PReLU, expand_channel_vectors, channelwise=True)
    for layer in PARAMETER_FREE_LAYERS:
        register_expansion_rule(layer, keep_unchanged, channelwise=True)


_register_builtin_rules()
