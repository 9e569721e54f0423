"""The classification task: one logits vector per sample, today's GPD objective.

CE on the student and on D (``label_smoothing`` for hard labels; soft targets such as
Mixup's are used as they are), SCE between the student and ``sg(D)`` with the paper's ε
(the GPD paper, section 3), the KD methods of :data:`gpd.distill.KD_METHODS` as they are,
top-1 accuracy. The float operations are those the Distiller ran before tasks existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F

from gpd.distill.tasks.base import Task
from gpd.distill.tasks.metrics import Metric, TopOneAccuracy
from gpd.errors import ArgumentError
from gpd.losses import sce

CWD_REASON = "kd='cwd' distils dense maps (a softmax over positions): it needs task='segmentation'"


class ClassificationTask(Task):
    """Class indices ``(N,)`` or soft targets ``(N, K)`` for logits ``(N, K)``."""

    name = "classification"
    title = "classification"
    refused_kd: ClassVar[Mapping[str, str]] = {"cwd": CWD_REASON}

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ArgumentError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def check_logits(self, logits: torch.Tensor) -> None:
        if logits.dim() >= 4:
            raise ArgumentError(
                f"task='classification' needs logits (batch, classes); the model gives {tuple(logits.shape)}, "
                "a dense map: use task='segmentation'"
            )

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():  # soft targets (Mixup/CutMix): already smoothed there
            return F.cross_entropy(logits, y)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def consistency(self, student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float) -> torch.Tensor:
        return sce(student_logits, dynamic_logits, eps=eps)

    def metric(self) -> Metric:
        return TopOneAccuracy()


__all__ = ["ClassificationTask"]
