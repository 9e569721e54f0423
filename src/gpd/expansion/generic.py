"""Generic per-channel tensors: a module's own tensors with one axis of channels.

Layer scales (torchvision's ``CNBlock.layer_scale``, metaformer's ``Scale``, ResMLP's
``ls1``/``ls2``, EdgeNeXt's ``gamma``), class tokens and position embeddings (any
model, not only timm's VisionTransformer) and GlobalResponseNorm's gamma/beta all
hold a tensor with exactly one axis whose size is a channel count the expansion
knows. D holds them tiled on that axis, never divided: they are added to or
multiply activations channel by channel, nothing sums over them. Scalars (StarReLU's
scale and bias, LearnableAffineBlock's) stay as they are. A tensor with no such axis is
refused by name; one with several is decided by its use (:func:`channel_axis`), else by
verification (``gpd.expand`` tries each: :class:`AmbiguousChannelAxis`).

The paper's layout (``ParamSlice.paper_scale``, docs/method.md "Per-layer steps")
divides tensors *added* to activations by r and keeps those that *multiply* them.
Which one a tensor is cannot be read off its shape, so the name decides: tokens,
position embeddings, biases, betas and shifts are added (``paper_scale = 1/r``);
everything else (gamma, scale, layer scale, weight, alpha) multiplies (1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Set
from contextvars import ContextVar

from torch import nn

from gpd.channel_maps import ChannelMap, WidthPlan, identity_map
from gpd.errors import ExpansionError
from gpd.expansion.layout import MeasuredInput
from gpd.expansion.rules import ExpandedLayer, LayerContext, channel_tensor_multiplies, run_pending_registrations
from gpd.sharing.param_slice import ParamSlice

ADDED_NAME_PARTS = ("token", "pos", "embed", "bias", "beta", "shift", "offset")
SIZE_ATTRIBUTES = ("in_channels", "out_channels", "in_features", "out_features", "num_features", "num_channels")


_CHANNEL_ATTRIBUTES: dict[type, tuple[str, ...]] = {}


def register_channel_attributes(module_class: type[nn.Module], names: tuple[str, ...]) -> None:
    """Declare attributes of a container that count channels and that its ``forward()``
    reshapes, splits or slices with (torchvision's ``VisionTransformer.hidden_dim``, the
    split sizes of timm's ``MixedConv2d``): an int, or a list or tuple of ints. D's copy
    holds D's counts."""
    _CHANNEL_ATTRIBUTES[module_class] = tuple(names)


def _resized(value: object, plan: WidthPlan) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return plan.dynamic_size(value)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return type(value)(plan.dynamic_size(v) for v in value)
    return None


def resize_channel_attributes(dynamic: nn.Module, plan: WidthPlan) -> list[str]:
    """Apply the declared channel attributes to every module of D; the names changed."""
    run_pending_registrations()
    changed = []
    for name, module in dynamic.named_modules():
        for cls in type(module).__mro__:
            for attr in _CHANNEL_ATTRIBUTES.get(cls, ()):
                value = _resized(getattr(module, attr, None), plan)
                if value is not None:
                    setattr(module, attr, value)
                    changed.append(f"{name}.{attr}" if name else attr)
    return changed


def is_added(name: str) -> bool:
    """Whether a generic tensor is added to activations (by its name; see the module docstring)."""
    return any(part in name.lower() for part in ADDED_NAME_PARTS)


def known_channel_counts(units: list[tuple[str, nn.Module]], plain_sizes: set[int]) -> set[int]:
    """Channel counts of the expanded axes of the units that have rules (their size attributes)."""
    counts: set[int] = set()
    for _, module in units:
        for attr in SIZE_ATTRIBUTES:
            value = getattr(module, attr, None)
            if isinstance(value, int) and value > 1:
                counts.add(value)
        shape = getattr(module, "normalized_shape", None)
        if isinstance(shape, (tuple, list)) and len(shape) == 1 and shape[0] > 1:
            counts.add(int(shape[0]))
    return counts - plain_sizes


def axes_meeting_input(shape: tuple[int, ...], measured: MeasuredInput | None) -> set[int]:
    """The axes of a tensor that meet an expanded axis of the layer's input of the same size when
    broadcast against it (aligned from the right, as ``x + t`` and ``x * t`` align them)."""
    if measured is None:
        return set()
    offset = len(measured.student_shape) - len(shape)
    found = set()
    for dim, size in enumerate(shape):
        channel_map = measured.maps.get(dim + offset)
        if channel_map is not None and channel_map.student_size == size:
            found.add(dim)
    return found


class AmbiguousChannelAxis(ExpansionError):
    """A parameter with several axes of a channel count that its use does not decide: ``gpd.expand``
    tries each (:func:`chosen_axes`) and keeps the one that verifies."""

    def __init__(self, message: str, tensor: str, axes: tuple[int, ...]) -> None:
        super().__init__(message)
        self.tensor, self.axes = tensor, axes


_CHOSEN_AXES: ContextVar[Mapping[str, int] | None] = ContextVar("gpd_chosen_axes", default=None)


@contextlib.contextmanager
def chosen_axes(choices: Mapping[str, int]) -> Iterator[None]:
    """Inside the block, the channel axis of each named tensor is the one given (``owner.name`` -> axis)."""
    token = _CHOSEN_AXES.set(dict(choices))
    try:
        yield
    finally:
        _CHOSEN_AXES.reset(token)


def ambiguity_of(err: BaseException) -> AmbiguousChannelAxis | None:
    """The :class:`AmbiguousChannelAxis` behind ``err`` (itself, or its cause: a failed run wraps it)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, AmbiguousChannelAxis):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def channel_axis(
    owner: str, name: str, shape: tuple[int, ...], counts: Set[int], parameter: bool, meets: Set[int] = frozenset()
) -> int | None:
    """The one axis of ``shape`` whose size is a known channel count; None for scalars.

    Where several axes have such a size (64 positions and 64 channels), the tensor's use decides:
    the one among them that ``meets`` an expanded axis of the activation it acts on
    (:func:`axes_meeting_input`). A parameter with none, or several undecided, is refused
    (ExpansionError naming it). Buffers are kept unchanged (None) unless declared: a mask or an
    index table can have an axis that merely equals a channel count (Swin's attention mask).
    """
    if not parameter or len(shape) == 0 or all(s == 1 for s in shape):
        return None
    axes = [d for d, s in enumerate(shape) if s in counts]
    if len(axes) == 1:
        return axes[0]
    used = [d for d in axes if d in meets]
    if len(axes) > 1 and len(used) == 1:
        return used[0]
    qualified = f"{owner}.{name}" if owner else name
    chosen = (_CHOSEN_AXES.get() or {}).get(qualified)
    if chosen is not None and chosen in axes:
        return chosen
    if len(axes) > 1 and len(shape) == 3 and shape[0] == 1 and axes[-1] == 2:
        return 2  # a (1, tokens, channels) sequence tensor: a token count can equal a channel count
    if not parameter:
        return None
    why = "no axis" if not axes else f"several axes ({', '.join(str(a) for a in axes)})"
    message = (
        f"tensor '{qualified}' of shape {tuple(shape)}: {why} of a channel count the "
        "expansion knows; declare its channel axis with gpd.register_channel_tensors or register a rule"
    )
    if len(axes) > 1:
        raise AmbiguousChannelAxis(message, qualified, tuple(axes))
    raise ExpansionError(message)


def own_tensor_slice(
    module: nn.Module, name: str, channel_map: ChannelMap, dim: int, declared: bool = False
) -> ParamSlice:
    """The ParamSlice of a tiled own tensor, with the paper's scale of an added or multiplying tensor.

    A declared tensor (gpd.register_channel_tensors) is added unless declared ``multiplies``.
    """
    added = not channel_tensor_multiplies(module, name) if declared else is_added(name)
    scale = channel_map.student_size / channel_map.dynamic_size if added else 1.0
    return ParamSlice({dim: channel_map}, paper_scale=scale)


def expand_own_tensors(
    module: nn.Module, target: nn.Module, owner: str, axes: dict[str, int | None], plan: WidthPlan, counts: set[int]
) -> dict[str, ParamSlice]:
    """Tile the tensors ``module`` holds itself into ``target`` (D's copy); their slices, by tensor name."""
    slices: dict[str, ParamSlice] = {}
    params = dict(module.named_parameters(recurse=False))
    for name, axis in axes.items():
        value = getattr(module, name)
        declared = axis is not None
        if axis is None:
            axis = channel_axis(owner, name, tuple(value.shape), counts, name in params)
        if axis is None:
            if name in params:
                slices[name] = ParamSlice({})
            continue
        dim = axis % value.ndim
        channel_map = plan.map(value.shape[dim])
        tiled = channel_map.expand(value, dim).detach().clone()
        if name in params:
            setattr(target, name, nn.Parameter(tiled, requires_grad=value.requires_grad))
            slices[name] = own_tensor_slice(module, name, channel_map, dim, declared)
        else:
            setattr(target, name, tiled)
    return slices


def _resize_shape_attributes(module: nn.Module, old: int, new: int) -> None:
    """Shape attributes a per-channel tensor is viewed with (metaformer's ``Scale.shape == (C, 1, 1)``)
    follow the tensor: a tuple of ints holding the channel count once, the rest ones."""
    for attr, value in list(vars(module).items()):
        if not (isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value)):
            continue
        if sum(v == old for v in value) == 1 and all(v in (old, 1, -1) for v in value):
            setattr(module, attr, type(value)(new if v == old else v for v in value))


def expand_generic_leaf(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    """A leaf without a rule whose tensors are per-channel (a layer scale, GRN, StarReLU).

    Each tensor is tiled on its one axis of the input's channel count, following the
    measured input layout (the layer keeps it: it is channel-wise); scalars stay.
    """
    import copy

    measured = ctx.measured
    sizes = {m.student_size for m in measured.maps.values()} if measured is not None else set()
    counts = sizes or ctx.known_counts
    new = copy.deepcopy(module)
    slices: dict[str, ParamSlice] = {}
    output_map: ChannelMap | None = None
    params = dict(module.named_parameters(recurse=False))
    tensors = list(params.items()) + list(module.named_buffers(recurse=False))
    for name, value in tensors:
        shape = tuple(value.shape)
        axis = channel_axis(ctx.name, name, shape, counts, name in params, axes_meeting_input(shape, measured))
        if axis is None:
            if name in params:
                slices[name] = ParamSlice({})
            continue
        channel_map = ctx.out_map(value.shape[axis]) if ctx.expand_output else identity_map(value.shape[axis])
        tiled = channel_map.expand(value, axis).detach().clone()
        if name in params:
            setattr(new, name, nn.Parameter(tiled, requires_grad=value.requires_grad))
            slices[name] = own_tensor_slice(module, name, channel_map, axis)
        else:
            setattr(new, name, tiled)
        _resize_shape_attributes(new, value.shape[axis], tiled.shape[axis])
        output_map = channel_map
    return ExpandedLayer(new, slices, output_map=output_map)
