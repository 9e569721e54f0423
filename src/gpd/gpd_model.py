"""GPDModel: a dynamic teacher D and the student that is a channel slice of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from gpd.expansion.channels import WidthPlan
from gpd.expansion.roles import LayerRoles
from gpd.sharing import StudentView

Role = Literal["student", "teacher"]


@dataclass
class ExpansionReport:
    """What :func:`gpd.expand` did: the roles it found, the rules it used, the errors it measured."""

    ratio: float
    roles: LayerRoles
    rules_used: dict[str, list[str]] = field(default_factory=dict)
    teacher_error: float | None = None  # float32 (the model's dtype) relative errors
    student_error: float | None = None
    checked_in_float64: bool = False  # float32 rounding exceeded the tolerance; float64 confirmed exactness


class PairRoles:
    """What every dynamic-teacher pair shares: D's forward, the role chosen at the call,
    D's export. A pair defines ``teacher`` and ``forward_student``."""

    teacher: nn.Module

    def forward_student(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def forward_teacher(self, *args: Any, **kwargs: Any) -> Any:
        return self.teacher(*args, **kwargs)

    def forward(self, *args: Any, role: Role, **kwargs: Any) -> Any:
        if role == "student":
            return self.forward_student(*args, **kwargs)
        if role == "teacher":
            return self.forward_teacher(*args, **kwargs)
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")

    def export_teacher(self) -> nn.Module:
        """A standalone copy of D, a plain wide network (branch blocks merged)."""
        from gpd.branches import merge_branches

        return merge_branches(self.teacher)


class GPDModel(PairRoles, nn.Module):
    """The dynamic teacher D (``teacher``) and the student that shares its parameters.

    ``teacher`` is an ordinary wide network of the student's own module classes; its
    parameters are all the trainable parameters. The student's parameters are read
    out of them on every student forward pass, so one optimizer over
    ``model.parameters()`` trains both. The student's BatchNorm statistics are its own
    buffers, stored under ``student.``.

    The role is chosen at each call: :meth:`forward_student`, :meth:`forward_teacher`,
    or ``model(x, role=...)``.
    """

    def __init__(self, teacher: nn.Module, student: StudentView, plan: WidthPlan, report: ExpansionReport) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.plan = plan
        self.report = report

    @property
    def ratio(self) -> float:
        return self.plan.ratio

    def student_parameters(self) -> dict[str, torch.Tensor]:
        """The student's parameters, derived from D's (differentiable views where possible)."""
        return self.student.derive(dict(self.teacher.named_parameters()))

    def forward_student(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(dict(self.teacher.named_parameters()), *args, **kwargs)

    def export_student(self) -> nn.Module:
        """A standalone student of the original class; its state_dict loads strictly into a fresh one.

        Multi-branch blocks, if the student has them, are merged into plain convolutions.
        """
        from gpd.branches import merge_branches

        exported = merge_branches(self.student.materialize(dict(self.teacher.named_parameters())))
        exported.train(self.training)
        return exported

    def extra_repr(self) -> str:
        return f"ratio={self.plan.ratio}"
