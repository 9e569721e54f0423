"""Channel maps: which student channel each channel of the dynamic teacher copies.

Every expanded axis of the dynamic teacher D is described by a :class:`ChannelMap`:
``source[j]`` is the student channel that D's channel ``j`` copies. With an integer
ratio ``r`` the map is a plain tile (``[0..C-1, 0..C-1, ...]``); with a non-integer
ratio the first ``C_D - C * floor(r)`` channels get one more copy (Net2Net-style
replication). The student's own channels are always the first copy of each channel,
so for a single segment they are a prefix of D's axis and can be read with a view.

The *interleaved* layout (``[0, 0, 1, 1, ...]``) keeps each channel's copies side by
side instead. It is the one a model needs when its ``forward()`` splits or slices a
tensor along channels (CSPNet, Res2Net, MixNet, GhostNet): any run of the student's
channels is then a run of D's, so the student's pieces are D's pieces. It costs an
index read of the student's tensors, which are no longer a prefix of D's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch

from gpd.deprecated import warn_renamed
from gpd.errors import ArgumentError, ExpansionError


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Where each of D's channels on one axis comes from in the student.

    Attributes:
        source: ``(C_D,)`` long tensor, the student channel copied by each D channel.
        student_size: number of channels of the student on this axis.
        student_index: ``(C_S,)`` long tensor, the position in D of each student
            channel (the first copy).
    """

    source: torch.Tensor
    student_size: int
    student_index: torch.Tensor = field(repr=False)

    @property
    def dynamic_size(self) -> int:
        """The number of D's channels on this axis."""
        return int(self.source.numel())

    @property
    def teacher_size(self) -> int:
        """Deprecated: the old name of ``dynamic_size`` (D's channels)."""
        warn_renamed("ChannelMap.teacher_size", "ChannelMap.dynamic_size")
        return self.dynamic_size

    @cached_property
    def counts(self) -> torch.Tensor:
        """Number of copies of each student channel in D, shape ``(C_S,)``."""
        return torch.bincount(self.source, minlength=self.student_size)

    @cached_property
    def is_identity(self) -> bool:
        return self.dynamic_size == self.student_size and bool(
            torch.equal(self.source, torch.arange(self.student_size))
        )

    @cached_property
    def uniform_count(self) -> int | None:
        """The number of copies when every channel has the same number, else None."""
        counts = self.counts
        first = int(counts[0]) if counts.numel() else 1
        return first if bool((counts == first).all()) else None

    @cached_property
    def student_is_prefix(self) -> bool:
        return bool(torch.equal(self.student_index, torch.arange(self.student_size)))

    def expand(self, tensor: torch.Tensor, dim: int, divide: bool = False) -> torch.Tensor:
        """Copy a student tensor onto D's channels along ``dim``.

        With ``divide`` each copy is divided by the number of copies of its channel,
        so that a layer reading all copies sums back to the student's value.
        """
        if tensor.shape[dim] != self.student_size:
            raise ExpansionError(
                f"cannot expand an axis of size {tensor.shape[dim]} with a channel map for {self.student_size} channels"
            )
        out = tensor.index_select(dim, self.source.to(tensor.device))
        if divide and not self.is_identity:
            out = out / self.copies_along(dim, out.ndim, out)
        return out

    def copies_along(self, dim: int, ndim: int, like: torch.Tensor) -> torch.Tensor | float:
        """Copies of the source channel of each D channel, shaped to broadcast on ``dim``."""
        if self.uniform_count is not None:
            return float(self.uniform_count)
        copies = self.counts[self.source].to(device=like.device, dtype=like.dtype)
        shape = [1] * ndim
        shape[dim] = -1
        return copies.view(shape)

    def select(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """The student's channels of a D tensor along ``dim`` (a view when possible)."""
        if self.student_is_prefix:
            return tensor.narrow(dim, 0, self.student_size)
        return tensor.index_select(dim, self.student_index.to(tensor.device))

    def student_scale(self, dim: int, ndim: int, like: torch.Tensor) -> torch.Tensor | float:
        """Per-student-channel number of copies, shaped to broadcast on ``dim``."""
        if self.uniform_count is not None:
            return float(self.uniform_count)
        shape = [1] * ndim
        shape[dim] = -1
        return self.counts.to(device=like.device, dtype=like.dtype).view(shape)


def identity_map(size: int) -> ChannelMap:
    """The map of an axis that is not expanded."""
    index = torch.arange(size)
    return ChannelMap(source=index, student_size=size, student_index=index)


def concat_maps(maps: list[ChannelMap]) -> ChannelMap:
    """The map of an axis made of segments, each expanded on its own (e.g. fused qkv).

    D's axis is laid out segment by segment, each segment holding its own copies.
    """
    sources, indices = [], []
    student_offset = dynamic_offset = 0
    for m in maps:
        sources.append(m.source + student_offset)
        indices.append(m.student_index + dynamic_offset)
        student_offset += m.student_size
        dynamic_offset += m.dynamic_size
    return ChannelMap(source=torch.cat(sources), student_size=student_offset, student_index=torch.cat(indices))


Layout = Literal["tiled", "interleaved"]
LAYOUTS: tuple[str, ...] = ("tiled", "interleaved")


@dataclass(frozen=True)
class WidthPlan:
    """How wide D is: one ratio, applied to every expanded axis, in one layout.

    The map of an axis depends only on its size, so a producer and all its consumers
    (a residual add, a skip connection) agree on the layout without talking to each
    other.
    """

    ratio: float
    layout: Layout = "tiled"

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio)):
            raise ExpansionError(f"ratio must be a number, got {self.ratio!r}")
        if self.ratio < 1:
            raise ExpansionError(f"ratio must be >= 1 (D is a wider copy of S), got {self.ratio}")
        if self.layout not in LAYOUTS:
            raise ArgumentError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    @property
    def is_integer(self) -> bool:
        return float(self.ratio).is_integer()

    def dynamic_size(self, student_size: int) -> int:
        """The number of D's channels on an axis of ``student_size`` channels."""
        return round(student_size * self.ratio)

    def teacher_size(self, student_size: int) -> int:
        """Deprecated: the old name of :meth:`dynamic_size`."""
        warn_renamed("WidthPlan.teacher_size()", "WidthPlan.dynamic_size()")
        return self.dynamic_size(student_size)

    def map(self, student_size: int, block: int = 1) -> ChannelMap:
        """The channel map of an expanded axis of ``student_size`` channels.

        ``block``: in the interleaved layout, copy runs of that many channels (an
        attention head's channels) rather than single channels, so that each of D's
        heads copies one whole student head; the tiled layout copies whole heads anyway.
        """
        size = self.dynamic_size(student_size)
        if self.layout == "interleaved":
            if block < 1 or student_size % block or size % block:
                raise ExpansionError(
                    f"ratio {self.ratio} gives {size} channels, not a whole number of blocks of {block}; use an integer ratio"
                )
            blocks, dynamic_blocks = student_size // block, size // block
            counts = torch.full((blocks,), dynamic_blocks // blocks, dtype=torch.long)
            counts[: dynamic_blocks - blocks * (dynamic_blocks // blocks)] += 1
            first_block = torch.repeat_interleave(torch.arange(blocks), counts)
            source = (first_block[:, None] * block + torch.arange(block)).reshape(-1)
            starts = (torch.cumsum(counts, 0) - counts) * block
            student_index = (starts[:, None] + torch.arange(block)).reshape(-1)
            return ChannelMap(source=source, student_size=student_size, student_index=student_index)
        index = torch.arange(student_size)
        return ChannelMap(source=torch.arange(size) % student_size, student_size=student_size, student_index=index)
