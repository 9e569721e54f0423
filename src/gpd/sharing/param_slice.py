"""How a student parameter is read out of the dynamic teacher's: the sharing contract.

A :class:`ParamSlice` names, for one student parameter, the channel map of every
expanded axis of D's tensor and the axis whose copies D divided; the student's value
is D's block on the student's channels, times the copies on that axis. It is the
hot path of every student forward (read by :class:`_ReadBlock`), and it knows
nothing of how D was built: expansion rules produce ParamSlices, the student view
and the export read them (docs/method.md, "Hard parameter sharing").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch

from gpd.channel_maps import ChannelMap
from gpd.choices import StepRule
from gpd.deprecated import COMPENSATE_STEP_RULES, renamed_value


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
    _scales: dict[tuple[torch.device, torch.dtype], torch.Tensor | float] = field(default_factory=dict, repr=False)

    def derive(
        self, dynamic_tensor: torch.Tensor, step_rule: StepRule = "paper", *, compensate_step: bool | None = None
    ) -> torch.Tensor:
        """The student's tensor: a view of D's where no rescaling is needed.

        When the result takes part in autograd, it is read by :class:`_ReadBlock`
        instead: one copy forward, and a backward that writes the student's gradient
        straight into a zero tensor laid out like D's parameter (see there).

        ``step_rule``: the student's value is ``scale * theta``, so its gradient
        reaches ``theta`` multiplied by ``scale`` and an SGD step moves the student's
        value by ``scale**2`` times the plain step (docs/method.md). With "plain" the
        gradient is divided by ``scale`` instead (same forward value), which removes
        that factor; tensors without a divided axis are unaffected. "paper" (the
        default) keeps the true derivative. ``compensate_step`` is the old boolean
        (True: "plain"); it warns.
        """
        if compensate_step is not None or isinstance(step_rule, bool):  # the old boolean, by name or by position
            old = compensate_step if compensate_step is not None else step_rule
            step_rule = renamed_value("ParamSlice.derive", "compensate_step", "step_rule", old, COMPENSATE_STEP_RULES)
        plain = step_rule == "plain"
        if torch.is_grad_enabled() and dynamic_tensor.requires_grad:
            read = self._block_reader()
            if read is not None:
                prefix, index_dim, index = read
                scale = self._scale(dynamic_tensor) if self.divided_dim is not None else None
                grad_scale = 1 / scale if plain and scale is not None else scale
                if index is not None:
                    index = index.to(dynamic_tensor.device)
                return _ReadBlock.apply(dynamic_tensor, prefix, index_dim, index, scale, grad_scale)
        out = dynamic_tensor
        for dim, channel_map in self.dims.items():
            out = channel_map.select(out, dim)
        if self.divided_dim is not None:
            scale = self._scale(out)
            if plain and out.requires_grad:
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
        dim = cast(int, self.divided_dim)  # only a divided parameter is scaled
        channel_map = self.dims[dim]
        if channel_map.uniform_count is not None:
            return float(channel_map.uniform_count)
        key = (like.device, like.dtype)
        if key not in self._scales:
            self._scales[key] = channel_map.student_scale(dim, like.ndim, like)
        return self._scales[key]

    def student_mask(self, dynamic_shape: torch.Size) -> torch.Tensor:
        """Boolean mask over D's tensor, True where the student's entries live."""
        mask = torch.ones(dynamic_shape, dtype=torch.bool)
        for dim, channel_map in self.dims.items():
            along = torch.zeros(dynamic_shape[dim], dtype=torch.bool)
            along[channel_map.student_index] = True
            shape = [1] * len(dynamic_shape)
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
    def forward(ctx, dynamic, prefix, index_dim, index, scale, grad_scale):
        block = dynamic
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
        ctx.shape, ctx.format = dynamic.shape, _memory_format(dynamic)
        ctx.prefix, ctx.index_dim, ctx.index, ctx.grad_scale = prefix, index_dim, index, grad_scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
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
