"""Losses between two sets of logits: GPD's smoothed soft cross-entropy and Hinton KD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpd.deprecated import renamed_kwargs


@renamed_kwargs(teacher_logits="dynamic_logits")
def sce(student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Soft cross-entropy of the student against D's label-smoothed softmax.

    ``mean_batch( -sum_c q_c log softmax(z_S)_c )`` with
    ``q = (1 - eps) softmax(z_D) + eps / K``. The target is detached: this loss never
    sends gradient into ``dynamic_logits`` (GPD's stop-gradient on D).
    """
    if student_logits.shape != dynamic_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(student_logits.shape)} vs {tuple(dynamic_logits.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    num_classes = student_logits.shape[-1]
    target = (1.0 - eps) * F.softmax(dynamic_logits.detach().float(), dim=-1) + eps / num_classes
    log_probs = F.log_softmax(student_logits.float(), dim=-1)
    return -(target * log_probs).sum(dim=-1).mean()


def kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's KD: ``T^2 KL(softmax(z_T / T) || softmax(z_S / T))``, averaged over the batch."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2
