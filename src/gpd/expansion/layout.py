"""Measured channel layouts: which student channel each channel of a D activation copies.

D's activations are copies of the student's channels, but not always as r tiled
copies ``[h, h]``: a concatenation of two tiled tensors is ``[a, a, b, b]``, a channel
shuffle permutes the copies. Rather than interpreting every functional op of a
``forward()`` (``torch.cat``, views, transposes), gpd builds D layer by layer along
one forward pass and *measures* the layout at the input of every layer that holds
tensors: each of D's input channels is matched with the student channel whose
activation it equals on the example batch. The layer's rule then permutes its weights
to read that layout (docs/method.md, "Channel layouts"); D stays a plain network.

A match is accepted only when every D channel equals one student channel to within
``MATCH_TOLERANCE`` of the activation's scale and every student channel has a copy;
otherwise the caller falls back to the tiled layout and verification decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gpd.expansion.channels import ChannelMap, WidthPlan, identity_map

MATCH_TOLERANCE = 1e-3  # relative to the activation's scale; 1e-7 when D is built in float64


def _tolerance(tensor: torch.Tensor) -> float:
    return 1e-7 if tensor.dtype == torch.float64 else MATCH_TOLERANCE


@dataclass(frozen=True)
class MeasuredInput:
    """The layout of a layer's first input in D, relative to the student's.

    ``maps`` holds, for each axis whose size differs between D and the student, the
    measured map; ``same`` the axes of equal size (not expanded: identity).
    """

    student_shape: tuple[int, ...]
    maps: dict[int, ChannelMap] = field(default_factory=dict)
    error: float = 0.0

    def along(self, size: int, dim: int | None) -> ChannelMap | None:
        """The map of the axis ``dim`` (or the only expanded axis of ``size`` channels)."""
        ndim = len(self.student_shape)
        if dim is not None:
            d = dim % ndim
            if d in self.maps:
                return self.maps[d] if self.maps[d].student_size == size else None
            return identity_map(size) if self.student_shape[d] == size else None
        matching = [m for m in self.maps.values() if m.student_size == size]
        if len(matching) == 1:
            return matching[0]
        if not self.maps and size in self.student_shape:
            return identity_map(size)
        return None


def _rows(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    return tensor.detach().movedim(dim, 0).reshape(tensor.shape[dim], -1).double()


def match_channels(teacher: torch.Tensor, student: torch.Tensor, dim: int, plan: WidthPlan) -> tuple[ChannelMap | None, float]:
    """The map of D's channels on ``dim`` onto the student's, and the worst mismatch found.

    The tiled map of the plan is tried first (the common case, one comparison); else
    each D channel is paired with its nearest student channel (random projections,
    then an exact check). Returns ``(None, error)`` when no layout explains D's tensor.
    """
    tolerance = _tolerance(student)
    a, b = _rows(teacher, dim), _rows(student, dim)
    if a.shape[1] != b.shape[1]:
        return None, float("inf")
    scale = float(b.abs().max()) or 1.0
    tiled = plan.map(b.shape[0])
    if tiled.teacher_size == a.shape[0]:
        error = float((a - b[tiled.source]).abs().max()) / scale if a.numel() else 0.0
        if error <= tolerance:
            return tiled, error
    generator = torch.Generator().manual_seed(0)
    projection = torch.randn(a.shape[1], 8, generator=generator, dtype=torch.float64)
    nearest = torch.cdist(a @ projection, b @ projection).argmin(1)
    per_channel = (a - b[nearest]).abs().amax(1) / scale if a.numel() else torch.zeros(a.shape[0])
    error = float(per_channel.max()) if per_channel.numel() else 0.0
    counts = torch.bincount(nearest, minlength=b.shape[0])
    if error > tolerance or bool((counts == 0).any()):
        return None, max(error, 1.0 if bool((counts == 0).any()) else error)
    first = torch.full((b.shape[0],), a.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, nearest, torch.arange(a.shape[0]), reduce="amin")
    return ChannelMap(source=nearest, student_size=b.shape[0], student_index=first), error


def measure_input(teacher: torch.Tensor, student: torch.Tensor, plan: WidthPlan) -> MeasuredInput | None:
    """The measured layout of one input tensor; None when no layout explains it (or ranks differ)."""
    if teacher.ndim != student.ndim or not teacher.is_floating_point():
        return None
    differing = [d for d in range(student.ndim) if teacher.shape[d] != student.shape[d]]
    if len(differing) > 1:
        return None
    if not differing:
        if not torch.allclose(teacher.double(), student.double(), rtol=0, atol=_tolerance(student) * (float(student.abs().max()) or 1.0)):
            return None
        return MeasuredInput(tuple(student.shape))
    dim = differing[0]
    channel_map, error = match_channels(teacher, student, dim, plan)
    if channel_map is None:
        return None
    return MeasuredInput(tuple(student.shape), {dim: channel_map}, error)
