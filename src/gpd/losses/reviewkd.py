"""ReviewKD (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021).

The student's multi-stage features (ordered shallow -> deep) are fused by a chain of
attention-based fusion (ABF) modules running from the deepest stage to the shallowest:
each stage's feature is projected to ``mid_channels``, merged with the fused feature of
the next deeper stage through two spatial attention maps, and projected to the teacher's
channel count for that stage. The hierarchical context loss (HCL) compares each fused
feature with the teacher's feature at several pooled resolutions.

Use in GPD: the student S and its dynamic teacher D have different widths, so each of
them gets its own :class:`ReviewKDHead`, sized to its own stage widths (and to the
static teacher's widths as targets). The heads are trainable parameters of the
distiller, optimised with S and D; they are not shared between S and D, and they are
discarded after training (they take no part in the deployed model).

Which features are fused (see :mod:`gpd.distill.features`): as in the ReviewKD paper's
code and mdistiller, the static teacher's targets are its stages' pre-activation
outputs plus a pooled level (its classifier's pooled input, a 1x1 map); the student's
(and D's) inputs are its stages' outputs, pre-activation by default (ReviewKD's
ImageNet code) or post-activation (``student_preact=False``, mdistiller's CIFAR-100
setting), plus its own pooled level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gpd.errors import ArgumentError


def _pool_levels(levels: Sequence[int], height: int, width: int) -> list[int]:
    """The pooled sizes used for an ``height x width`` map, largest first.

    A level ``l`` is used when pooling to ``l x l`` reduces the map: ``l <= min(H, W)``
    and ``(l, l) != (H, W)``. For square maps this is simply ``l < H``.
    """
    used = sorted({int(level) for level in levels}, reverse=True)
    return [level for level in used if level <= min(height, width) and (level, level) != (height, width)]


def hcl(
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    levels: Sequence[int] = (4, 2, 1),
) -> torch.Tensor:
    """Hierarchical context loss, summed over the feature pairs.

    For one pair of ``(N, C, H, W)`` maps ``s`` and ``t`` (same shape), with ``l_1 > l_2 > ...``
    the distinct entries of ``levels`` that reduce the map (``l <= min(H, W)`` and
    ``(l, l) != (H, W)``; for square maps ``l < H``)::

        loss = (1 * MSE(s, t) + sum_k 2^-k * MSE(P_k(s), P_k(t))) / (1 + sum_k 2^-k)

    where ``P_k`` is adaptive average pooling to ``l_k x l_k``, ``k = 1, 2, ...`` counts only
    the used levels, and ``MSE`` is the mean of squared differences over all elements. So
    the weights are 1.0 for the full resolution, then 0.5, 0.25, ... for the pooled levels
    from the finest to the coarsest, normalised by their sum. E.g. an 8x8 map with the
    default levels uses (8, 4, 2, 1) with weights (1, 0.5, 0.25, 0.125) / 1.875; a 4x4
    map uses (4, 2, 1) with weights (1, 0.5, 0.25) / 1.75.

    The teacher features are detached (fixed targets). Computed in at least float32.
    """
    if len(student_features) != len(teacher_features):
        raise ArgumentError(f"{len(student_features)} student features vs {len(teacher_features)} teacher features")
    if len(student_features) == 0:
        raise ArgumentError("hcl needs at least one pair of feature maps")
    if any(int(level) < 1 for level in levels):
        raise ArgumentError(f"levels must be positive, got {tuple(levels)}")
    total = None
    for index, (student, teacher) in enumerate(zip(student_features, teacher_features)):
        if student.shape != teacher.shape or student.dim() != 4:
            raise ArgumentError(
                f"pair {index}: need two (N, C, H, W) maps of the same shape, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        dtype = torch.promote_types(student.dtype, torch.float32)
        student = student.to(dtype)
        teacher = teacher.detach().to(dtype)
        loss = F.mse_loss(student, teacher)
        weight, weight_sum = 1.0, 1.0
        for level in _pool_levels(levels, student.shape[-2], student.shape[-1]):
            weight /= 2.0
            weight_sum += weight
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(student, level), F.adaptive_avg_pool2d(teacher, level)
            )
        loss = loss / weight_sum
        total = loss if total is None else total + loss
    assert total is not None  # at least one pair, checked above
    return total


class ABF(nn.Module):
    """Attention-based fusion of one stage's feature with the fused feature of the deeper stage.

    ``x -> BN(conv1x1(x))`` (``in_channels -> mid_channels``, no bias). With ``fuse``, the
    deeper ``residual`` (``mid_channels``) is upsampled (nearest) to x's spatial size,
    ``[x, residual]`` goes through a 1x1 conv (``2 * mid -> 2``) and a sigmoid, and the two
    maps ``a0, a1`` give ``x = x * a0 + residual * a1``. The output is
    ``BN(conv3x3(x))`` (``mid_channels -> out_channels``, no bias, padding 1).

    The 1x1 and 3x3 projection convs start from ``kaiming_uniform_(a=1)``, as in the
    ReviewKD paper's code and mdistiller; the attention conv keeps PyTorch's default.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.fuse = bool(fuse)
        reduce = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.reduce = nn.Sequential(reduce, nn.BatchNorm2d(mid_channels))
        self.attention = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if self.fuse else None
        )
        project = nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.project = nn.Sequential(project, nn.BatchNorm2d(out_channels))
        nn.init.kaiming_uniform_(reduce.weight, a=1)  # after every default init, in the same order as before
        nn.init.kaiming_uniform_(project.weight, a=1)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        out_size: int | tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(output, fused)``: ``output`` has ``out_channels``, ``fused`` has ``mid_channels``.

        ``fused`` keeps x's spatial size (it is the residual for the next shallower stage).
        ``out_size``, if given, resizes the fused map (nearest) before the 3x3 projection,
        so ``output`` has that spatial size; otherwise ``output`` has x's spatial size.
        """
        x = self.reduce(x)
        if self.attention is not None:  # self.fuse
            if residual is None:
                raise ArgumentError("this ABF fuses: pass the deeper stage's fused feature as residual")
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            attention = self.attention(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        elif residual is not None:
            raise ArgumentError("this ABF does not fuse (deepest stage): residual must be None")
        fused = x
        if out_size is not None:
            size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="nearest")
        return self.project(x), fused


class ReviewKDHead(nn.Module):
    """ABF chain over the student's stages (shallow -> deep), fused from the deepest stage down.

    ``forward(student_features)`` returns one map per stage, in the original shallow -> deep
    order, with ``teacher_channels[i]`` channels and the student's spatial size of stage i.
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], mid_channels: int) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ArgumentError(f"{len(student_channels)} student stages vs {len(teacher_channels)} teacher stages")
        if len(student_channels) == 0:
            raise ArgumentError("ReviewKDHead needs at least one stage")
        last = len(student_channels) - 1
        self.abfs = nn.ModuleList(
            ABF(s_ch, mid_channels, t_ch, fuse=index < last)
            for index, (s_ch, t_ch) in enumerate(zip(student_channels, teacher_channels))
        )

    def forward(self, student_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(student_features) != len(self.abfs):
            raise ArgumentError(f"expected {len(self.abfs)} feature maps, got {len(student_features)}")
        outputs: list[torch.Tensor | None] = [None] * len(self.abfs)
        residual = None
        for index in reversed(range(len(self.abfs))):
            outputs[index], residual = self.abfs[index](student_features[index], residual)
        return outputs  # type: ignore[return-value]


def reviewkd_loss(
    head: ReviewKDHead,
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    levels: Sequence[int] = (4, 2, 1),
) -> torch.Tensor:
    """``hcl(head(student_features), teacher_features)``.

    A teacher map whose spatial size differs from the student's for that stage is
    adaptive-average-pooled to the student's size first. The teacher features are detached.
    """
    fused = head(student_features)
    if len(teacher_features) != len(fused):
        raise ArgumentError(f"{len(fused)} student stages vs {len(teacher_features)} teacher features")
    targets = []
    for index, (out, teacher) in enumerate(zip(fused, teacher_features)):
        if teacher.shape[:2] != out.shape[:2]:
            raise ArgumentError(
                f"stage {index}: head output {tuple(out.shape)} and teacher feature "
                f"{tuple(teacher.shape)} differ in batch or channels"
            )
        teacher = teacher.detach()
        if teacher.shape[-2:] != out.shape[-2:]:
            teacher = F.adaptive_avg_pool2d(teacher, out.shape[-2:])
        targets.append(teacher)
    return hcl(fused, targets, levels)
