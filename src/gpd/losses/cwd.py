"""Channel-wise distillation (CWD): Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021.

Each channel ``c`` of a dense map ``y`` (``(N, C, *spatial)``, logits here) becomes a
distribution over the spatial positions, ``phi(y_c)_i = exp(y_c,i / tau) / sum_j exp(y_c,j / tau)``,
and the student's channel follows the teacher's through

    CWD = tau^2 / C * sum_c sum_i phi(y^T_c)_i log(phi(y^T_c)_i / phi(y^S_c)_i),

averaged over the batch (the paper's normalisation: the sum over channels divided by
``C``, times ``tau^2``; this is the mean over the ``N * C`` channel maps). Where a
per-pixel loss asks "which class here?", CWD asks "where is this class?": the KL weighs
the positions where the teacher's channel is large, the salient regions of each class.

Published setting on logits: mmrazor's CWD configs for PSPNet (ResNet-101 teacher,
ResNet-18 student, Cityscapes) distil the logits of ``decode_head.conv_seg`` with
``tau = 1`` and loss weight 5 (``CWD_TAU``, ``CWD_LOSS_WEIGHT``); the authors' own release
(mmsegmentation-distiller) names its logits config ``cwd_w_10_t_1`` (weight 10, tau 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpd.errors import ArgumentError
from gpd.losses.segmentation import teacher_on_student_grid
from gpd.losses.soft_targets import _at_least_float32

CWD_TAU = 1.0
"""CWD's temperature on segmentation logits in mmrazor's released PSPNet configs."""

CWD_LOSS_WEIGHT = 5.0
"""CWD's loss weight on segmentation logits in mmrazor's released PSPNet configs."""


def channel_wise_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = CWD_TAU) -> torch.Tensor:
    """CWD loss (unweighted): per channel, ``tau^2 KL(phi(z_T / tau) || phi(z_S / tau))`` over positions.

    ``phi`` is a softmax over the spatial positions of one channel of one image; the result
    is the mean over batch and channels. ``teacher_logits`` is detached (and resized to the
    student's spatial size if it differs, as for the per-pixel losses of
    :mod:`gpd.losses.segmentation`). Labels play no part, so ignored pixels count as any
    other position. Computed in float32, or float64 for float64 logits.
    """
    if tau <= 0:
        raise ArgumentError(f"tau must be > 0, got {tau}")
    teacher = teacher_on_student_grid(student_logits, teacher_logits)
    batch, channels = student_logits.shape[:2]
    student = _at_least_float32(student_logits).reshape(batch, channels, -1)
    log_student = F.log_softmax(student / tau, dim=-1)
    log_teacher = F.log_softmax(teacher.reshape(batch, channels, -1) / tau, dim=-1)
    per_channel = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=-1)
    return per_channel.mean() * tau**2
