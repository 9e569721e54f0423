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
from gpd.distill.kd_methods import KDLoss, build_kd_method
from gpd.errors import ConfigError
from gpd.expansion import expand
from gpd.expansion.expand import with_branches
from gpd.gpd_model import GPDModel
from gpd.losses import sce


def freeze(teacher: nn.Module) -> nn.Module:
    """A static teacher: eval mode (BatchNorm statistics fixed) and no gradients."""
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


class Distiller(nn.Module):
    """Train a student with GPD (or alone, as the baseline) through one loss dict.

    With ``dynamic_teacher=True`` the student is expanded into a dynamic teacher D of
    width ``ratio`` that shares its parameters, and the loss is

        CE(z_D, y) + CE(z_S, y) + sce_weight * SCE(z_S || sg(z_D))

    (DESIGN.md section 5, scratch and fine-tuning scenarios). With a frozen static
    ``teacher`` and a KD method (``kd="kd"`` or ``"dkd"``, options in ``kd_options``)
    the method's loss against the static teacher is added for D and for the student.
    With ``dynamic_teacher=False`` the student trains alone: CE, plus KD if a static
    teacher is given (the baselines).

    ``parameters()`` are the trainable parameters: D's when GPD is on, the student's
    otherwise. ``branches="orepa"`` trains every 3x3 stride-1 convolution as a
    six-branch block (Channel-Branch Reparameterization). ``export_student()`` returns
    a plain student of the original class, branches merged.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        kd: str | KDLoss = "none",
        ratio: float = 2.0,
        *,
        kd_options: dict[str, float] | None = None,
        dynamic_teacher: bool = True,
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
        self.kd_loss = build_kd_method(kd, **(kd_options or {})) if isinstance(kd, str) else kd
        if (teacher is None) != (self.kd_loss is None):
            raise ConfigError(
                "a static teacher needs a KD method and a KD method needs a static teacher "
                f"(teacher {'given' if teacher is not None else 'missing'}, kd={kd!r})"
            )
        self.static_teacher = freeze(teacher) if teacher is not None else None
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

    def train(self, mode: bool = True) -> Distiller:
        """Train mode for the student and D; the static teacher stays frozen in eval mode."""
        super().train(mode)
        if self.static_teacher is not None:
            self.static_teacher.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, epoch: float | None = None) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch; their sum is the training loss.

        ``epoch`` (fractional, from 0) drives KD warm-up schedules such as DKD's.
        """
        ce = lambda logits: F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)  # noqa: E731
        static_logits = None
        if self.static_teacher is not None:
            with torch.no_grad():
                static_logits = self.static_teacher(x)
        losses: dict[str, torch.Tensor] = {}
        if self.gpd is not None:
            teacher_logits = self.gpd.forward_teacher(x)
            losses["ce_teacher"] = ce(teacher_logits)
            if static_logits is not None:
                losses["kd_teacher"] = self.kd_loss(teacher_logits, static_logits, y, epoch)  # type: ignore[misc]
            student_logits = self.gpd.forward_student(x)
        else:
            student_logits = self.plain(x)  # type: ignore[misc]
        losses["ce_student"] = ce(student_logits)
        if static_logits is not None:
            losses["kd_student"] = self.kd_loss(student_logits, static_logits, y, epoch)  # type: ignore[misc]
        if self.gpd is not None:
            losses["sce"] = self.sce_weight * sce(student_logits, teacher_logits, eps=self.sce_eps)
        return losses

    def export_student(self) -> nn.Module:
        """A standalone copy of the student, in eval mode."""
        if self.gpd is not None:
            student = self.gpd.export_student()
        else:
            student = merge_branches(self.plain)
        return student.eval()  # type: ignore[union-attr]
