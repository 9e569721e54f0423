"""Which path each composed branch of a six-branch block takes: merged into the kernel, or run on the batch.

Branches 0, 1, 2 and 4 are kernels (or rank-1 kernels) already: merging them costs a few
elementwise passes over the kernel, never more than any convolution on the batch, so
they are always merged. Branches 3 and 5 are compositions whose merge costs depend on
the block's shape only, while running them on the batch costs in proportion to the
batch and the spatial size (docs/branches.md, "Training cost"). Per forward pass, with
O, I output and input channels, Ig = I / groups and P = batch x height x width positions:

=====  =====================================  =========================================
 b     merged into the kernel (MACs)           run on the batch (MACs)
=====  =====================================  =========================================
 3     9 O Ig^2: K3 times the inner 1x1 W      P (I Ig + 9 O Ig): the 1x1 W, then a 3x3
       (one matrix product per group)          conv with s3 K3 (K3 itself stays merged)
 5     72 O Ig: pw times dw (one (Og x 8)      P (72 I + 8 O Ig): the depthwise 3x3 with
       by (8 x 9) product per input channel)   8 filters per channel, then the 1x1 pw
=====  =====================================  =========================================

The backward costs about twice the forward on both paths (two products for the merge,
input and weight gradients for the convolutions), so comparing the forward costs picks
the cheaper step. The MAC counts are weighted by the measured relative cost of a MAC in
each kind of op (:data:`MAC_COST`): the big matrix products of branch 3's merge run at a
higher rate than convolutions on small maps, branch 5's tiny products at a far lower
one. ``python benchmarks/branches.py --paths`` times both paths of each composed branch
on the block shapes of the bundled pairs and reports where the model's choice and the
measured faster path agree (docs/branches.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpd.errors import ArgumentError

PathName = Literal["auto", "merge", "batch"]
PATH_NAMES: tuple[str, ...] = ("auto", "merge", "batch")

# Relative cost of one multiply-add, measured on a 2-core x86-64 CPU with one thread
# (benchmarks/branches.py --paths; docs/branches.md): convolutions on the batch = 1.
MAC_COST = {
    "conv": 1.0,  # the branch convolutions run on the batch
    "merge_1x1": 0.5,  # branch 3's (Og * 9 x Ig) by (Ig x Ig) matrix product per group
    "merge_dw": 8.0,  # branch 5's (Og x 8) by (8 x 9) products, one per input channel
}


@dataclass(frozen=True)
class BlockShape:
    """What the choice depends on: the block's channels and groups, and the positions P it runs on."""

    out_channels: int
    in_channels: int
    groups: int
    positions: int  # batch x output height x output width

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups


@dataclass(frozen=True)
class BranchPaths:
    """Per composed branch, whether it is merged into the kernel (True) or run on the batch (False)."""

    merge_1x1: bool = True  # branch 3: K3 composed with the inner 1x1
    merge_dw: bool = True  # branch 5: depthwise then pointwise

    def describe(self) -> str:
        """A short label: ``merge`` when both are merged, else which branches run on the batch."""
        on_batch = [name for name, merged in (("b3", self.merge_1x1), ("b5", self.merge_dw)) if not merged]
        return "merge" if not on_batch else "batch:" + "+".join(on_batch)


ALL_MERGED = BranchPaths(True, True)
ALL_ON_BATCH = BranchPaths(False, False)


def branch_costs(shape: BlockShape) -> dict[str, tuple[float, float]]:
    """Weighted forward costs ``(merged, on the batch)`` of branches 3 and 5 (the table above)."""
    o, i, ig, p = shape.out_channels, shape.in_channels, shape.in_per_group, shape.positions
    conv = MAC_COST["conv"]
    return {
        "b3": (MAC_COST["merge_1x1"] * 9 * o * ig * ig, conv * p * (i * ig + 9 * o * ig)),
        "b5": (MAC_COST["merge_dw"] * 72 * o * ig, conv * p * (72 * i + 8 * o * ig)),
    }


def least_training_macs(shape: BlockShape) -> float:
    """The multiply-adds branches 3 and 5 cost at least in one training step, whichever path each takes.

    Unweighted MACs of the cheaper path of each (the table above), times three for the
    forward and the two products of the backward (the kernel's or the input's gradient,
    and the weights'). ``benchmarks/speed.py --branch-cost`` adds them to the branch-free
    step's FLOPs: the FLOP ratio no choice of paths can go below.
    """
    o, i, ig, p = shape.out_channels, shape.in_channels, shape.in_per_group, shape.positions
    b3 = min(9 * o * ig * ig, p * (i * ig + 9 * o * ig))
    b5 = min(72 * o * ig, p * (72 * i + 8 * o * ig))
    return 3.0 * (b3 + b5)


def choose_paths(shape: BlockShape, path: str = "auto") -> BranchPaths:
    """The cheaper path of each composed branch (``auto``), or every branch forced one way."""
    if path == "merge":
        return ALL_MERGED
    if path == "batch":
        return ALL_ON_BATCH
    if path != "auto":
        raise ArgumentError(f"branch path must be one of {', '.join(PATH_NAMES)}, got {path!r}")
    costs = branch_costs(shape)
    return BranchPaths(merge_1x1=costs["b3"][0] <= costs["b3"][1], merge_dw=costs["b5"][0] <= costs["b5"][1])
