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

from gpd.channel_maps import ChannelMap, WidthPlan, identity_map

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


def _duplicate_groups(b: torch.Tensor, tolerance: float, scale: float) -> torch.Tensor:
    """For each student channel, the lowest-index student channel equal to it (itself if none).

    Equal channels are typically dead ones (all zero after a ReLU on the example batch):
    the example cannot tell their copies apart, so :func:`_assign_ties` decides by position.
    Rows are compared on a grid of the tolerance (one sort, not all pairs); two equal
    rows that straddle a grid line stay apart, which can only refuse, never mislead.
    """
    grid = torch.round(b / (tolerance * scale)).to(torch.int64)
    _, inverse = torch.unique(grid, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if inverse.numel() else 0,), b.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(b.shape[0]), reduce="amin")
    return first[inverse]


def _assign_ties(nearest: torch.Tensor, group: torch.Tensor, student_size: int) -> torch.Tensor:
    """Pick, for each D channel matching a group of equal student channels, one member of the group.

    D's layouts are runs of consecutive student channels (tiles, concatenations), so a
    tied channel continues a run: the run of its left neighbour (previous + 1) or the
    run of the nearest untied channel to its right (that one's source - distance); when
    both fit and disagree, a run boundary lies between, and the right run, which starts
    a new segment at its first channel, wins. Otherwise the least-used member.
    """
    members: dict[int, set[int]] = {}
    for s in range(student_size):
        members.setdefault(int(group[s]), set()).add(s)
    roots = group[nearest]
    tied = torch.tensor([len(members[int(g)]) > 1 for g in roots.tolist()], dtype=torch.bool)
    source = roots.clone()
    source[~tied] = nearest[~tied]
    untied = (~tied).nonzero().flatten().tolist()
    used = torch.bincount(source[~tied], minlength=student_size)
    k = 0
    for j in range(source.numel()):
        if not bool(tied[j]):
            continue
        candidates = members[int(roots[j])]
        while k < len(untied) and untied[k] < j:
            k += 1
        left = int(source[j - 1]) + 1 if j >= 1 else None
        right = int(source[untied[k]]) - (untied[k] - j) if k < len(untied) else None
        if right in candidates:
            choice = right
        elif left in candidates:
            choice = left
        else:
            choice = min(candidates, key=lambda c: (int(used[c]), c))
        source[j] = choice
        used[choice] += 1
    return source


def _rebalance_ties(source: torch.Tensor, group: torch.Tensor, student_size: int) -> torch.Tensor:
    """Give every student channel of a tied group a copy, moving spare copies within the group.

    Where the position heuristics of :func:`_assign_ties` fail (a shuffle's layout is no
    run), a member can be left without a copy although the group has copies to spare.
    The example cannot tell the members apart, so any spare copy serves; a channel that
    differs on other inputs is refused by the verification, which uses other samples.
    """
    source = source.clone()
    counts = torch.bincount(source, minlength=student_size)
    for missing in (counts == 0).nonzero().flatten().tolist():
        members = (group == group[missing]).nonzero().flatten()
        donors = [int(m) for m in members if int(counts[m]) > 1]
        if not donors:
            continue
        donor = max(donors, key=lambda m: (int(counts[m]), m))
        position = int((source == donor).nonzero().flatten()[-1])
        source[position] = missing
        counts[donor] -= 1
        counts[missing] += 1
    return source


def _consistent_prior(priors: list[ChannelMap], nearest: torch.Tensor, group: torch.Tensor) -> ChannelMap | None:
    """The first known layout (one already found in D) that the example cannot tell from the measured one."""
    for prior in priors:
        if prior.dynamic_size == nearest.numel() and prior.student_size == group.numel():
            if torch.equal(group[prior.source], group[nearest]):
                return prior
    return None


def match_channels(
    dynamic: torch.Tensor, student: torch.Tensor, dim: int, plan: WidthPlan, priors: list[ChannelMap] | None = None
) -> tuple[ChannelMap | None, float]:
    """The map of D's channels on ``dim`` onto the student's, and the worst mismatch found.

    The tiled map of the plan is tried first (the common case, one comparison); else
    each D channel is paired with its nearest student channel (random projections,
    then an exact check). D channels equal to several student channels (dead ones)
    take a known layout of ``priors`` that fits, else are assigned by position.
    Returns ``(None, error)`` when no layout explains D's tensor.
    """
    tolerance = _tolerance(student)
    a, b = _rows(dynamic, dim), _rows(student, dim)
    if a.shape[1] != b.shape[1]:
        return None, float("inf")
    scale = float(b.abs().max()) or 1.0
    tiled = plan.map(b.shape[0])
    if tiled.dynamic_size == a.shape[0]:
        error = float((a - b[tiled.source]).abs().max()) / scale if a.numel() else 0.0
        if error <= tolerance:
            return tiled, error
    generator = torch.Generator().manual_seed(0)
    projection = torch.randn(a.shape[1], 8, generator=generator, dtype=torch.float64)
    nearest = torch.cdist(a @ projection, b @ projection).argmin(1)
    per_channel = (a - b[nearest]).abs().amax(1) / scale if a.numel() else torch.zeros(a.shape[0])
    error = float(per_channel.max()) if per_channel.numel() else 0.0
    if error > tolerance:
        return None, error
    group = _duplicate_groups(b, tolerance, scale)
    if not torch.equal(group, torch.arange(b.shape[0])):
        prior = _consistent_prior([tiled, *(priors or [])], nearest, group)
        if prior is not None:
            return prior, error
        nearest = _rebalance_ties(_assign_ties(nearest, group, b.shape[0]), group, b.shape[0])
    counts = torch.bincount(nearest, minlength=b.shape[0])
    if bool((counts == 0).any()):
        return None, 1.0
    first = torch.full((b.shape[0],), a.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, nearest, torch.arange(a.shape[0]), reduce="amin")
    return ChannelMap(source=nearest, student_size=b.shape[0], student_index=first), error


def measure_input(
    dynamic: torch.Tensor, student: torch.Tensor, plan: WidthPlan, priors: list[ChannelMap] | None = None
) -> MeasuredInput | None:
    """The measured layout of one input tensor; None when no layout explains it (or ranks differ)."""
    if dynamic.ndim != student.ndim or not dynamic.is_floating_point():
        return None
    differing = [d for d in range(student.ndim) if dynamic.shape[d] != student.shape[d]]
    if len(differing) > 1:
        return None
    if not differing:
        if not torch.allclose(
            dynamic.double(), student.double(), rtol=0, atol=_tolerance(student) * (float(student.abs().max()) or 1.0)
        ):
            return None
        return MeasuredInput(tuple(student.shape))
    dim = differing[0]
    channel_map, error = match_channels(dynamic, student, dim, plan, priors)
    if channel_map is None:
        return None
    return MeasuredInput(tuple(student.shape), {dim: channel_map}, error)
