"""Losses between two sets of logits: GPD's smoothed soft cross-entropy and Hinton KD.

Both compute in float32, or in the logits' own precision if higher: half-precision
logits (float16, bfloat16, from an autocast forward) are upcast, float64 logits are not
rounded down (as in :mod:`gpd.losses.dkd`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpd.deprecated import renamed_kwargs
from gpd.errors import ArgumentError


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in float32 if their precision is lower, else as they are (no copy for float32)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


@renamed_kwargs(teacher_logits="dynamic_logits")
def sce(student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Soft cross-entropy of the student against D's label-smoothed softmax.

    ``mean_batch( -sum_c q_c log softmax(z_S)_c )`` with
    ``q = (1 - eps) softmax(z_D) + eps / K``. The target is detached: this loss never
    sends gradient into ``dynamic_logits`` (GPD's stop-gradient on D).
    """
    if student_logits.shape != dynamic_logits.shape:
        raise ArgumentError(f"logit shapes differ: {tuple(student_logits.shape)} vs {tuple(dynamic_logits.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ArgumentError(f"eps must be in [0, 1], got {eps}")
    return sce_per_sample(student_logits, dynamic_logits, eps).mean()


def sce_per_sample(student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`sce` before the batch mean: one value per row (the per-pixel losses mask these)."""
    num_classes = student_logits.shape[-1]
    target = (1.0 - eps) * F.softmax(_at_least_float32(dynamic_logits.detach()), dim=-1) + eps / num_classes
    log_probs = F.log_softmax(_at_least_float32(student_logits), dim=-1)
    return -(target * log_probs).sum(dim=-1)


def kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's KD: ``T^2 KL(softmax(z_T / T) || softmax(z_S / T))``, averaged over the batch."""
    if temperature <= 0:
        raise ArgumentError(f"temperature must be > 0, got {temperature}")
    log_student, log_teacher = kd_log_probs(student_logits, teacher_logits, temperature)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def kd_log_probs(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log softmax(z_S / T), log softmax(sg(z_T) / T))`` over the last axis, as :func:`kd` uses them."""
    log_student = F.log_softmax(_at_least_float32(student_logits) / temperature, dim=-1)
    log_teacher = F.log_softmax(_at_least_float32(teacher_logits.detach()) / temperature, dim=-1)
    return log_student, log_teacher
