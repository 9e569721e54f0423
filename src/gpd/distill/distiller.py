"""The GPD objective as a module: ``forward(x, y)`` returns its named loss terms.

Following the distiller contract of mdistiller, a method returns its losses as a dict
of weighted scalars; the training loop only sums them. The CLI's trainer and a
user's own loop use this same object.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpd.branches import merge_branches
from gpd.expansion import expand
from gpd.expansion.expand import with_branches
from gpd.gpd_model import GPDModel
from gpd.losses import sce


class Distiller(nn.Module):
    """Train a student with GPD (or alone, as the baseline) through one loss dict.

    With ``dynamic_teacher=True`` the student is expanded into a dynamic teacher D of
    width ``ratio`` that shares its parameters, and the loss is

        CE(z_D, y) + CE(z_S, y) + sce_weight * SCE(z_S || sg(z_D))

    (DESIGN.md section 5, scratch and fine-tuning scenarios). With
    ``dynamic_teacher=False`` the student trains on CE alone.

    ``parameters()`` are the trainable parameters: D's when GPD is on, the student's
    otherwise. ``branches="orepa"`` trains every 3x3 stride-1 convolution as a
    six-branch block (Channel-Branch Reparameterization). ``export_student()`` returns
    a plain student of the original class, branches merged.
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        dynamic_teacher: bool = True,
        ratio: float = 2.0,
        sce_weight: float = 3.0,
        sce_eps: float = 0.1,
        label_smoothing: float = 0.0,
        noise_std: float = 0.0,
        input_size: tuple[int, ...] | None = None,
        example_input: Any = None,
        branches: str | None = None,
        branch_init: str = "default",
    ) -> None:
        super().__init__()
        self.sce_weight = sce_weight
        self.sce_eps = sce_eps
        self.label_smoothing = label_smoothing
        self.gpd: GPDModel | None = None
        self.plain: nn.Module | None = None
        if dynamic_teacher:
            self.gpd = expand(
                student,
                ratio,
                input_size=input_size,
                example_input=example_input,
                noise_std=noise_std,
                branches=branches,
                branch_init=branch_init,
            )
        else:
            self.plain = with_branches(student, branches, branch_init)

    @property
    def has_dynamic_teacher(self) -> bool:
        return self.gpd is not None

    def student_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpd.forward_student(x) if self.gpd is not None else self.plain(x)  # type: ignore[misc]

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.gpd is None:
            raise RuntimeError("this Distiller trains the student alone; it has no dynamic teacher")
        return self.gpd.forward_teacher(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch; their sum is the training loss."""
        ce = lambda logits: F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)  # noqa: E731
        if self.gpd is None:
            return {"ce_student": ce(self.plain(x))}  # type: ignore[misc]
        teacher_logits = self.gpd.forward_teacher(x)
        student_logits = self.gpd.forward_student(x)
        return {
            "ce_teacher": ce(teacher_logits),
            "ce_student": ce(student_logits),
            "sce": self.sce_weight * sce(student_logits, teacher_logits, eps=self.sce_eps),
        }

    def export_student(self) -> nn.Module:
        """A standalone copy of the student, in eval mode."""
        if self.gpd is not None:
            student = self.gpd.export_student()
        else:
            student = merge_branches(self.plain)
        return student.eval()  # type: ignore[union-attr]
