"""A dynamic teacher and its student, with shared or separate parameters.

:class:`~gpd.expansion.model.GPDModel` is the paper's pair: the student is a channel slice
of D (hard parameter sharing). :class:`UnsharedPair` is the ablation ``gpd.share=false``:
D is still built from the student by Inverse Reparameterization, so both start as the
same function, but from then on D and the student own separate parameters and move
independently; only the loss (CE of each, SCE of the student towards the stop-gradient
of D, KD terms) ties them together.

Both satisfy :class:`DynamicPair`, the interface the trainer and the Distiller use.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from gpd.deprecated import renamed_kwargs
from gpd.expansion.model import ExpansionReport, GPDModel, PairRoles
from gpd.expansion.rules import RULES  # the branch kinds: exports merge their blocks


@runtime_checkable
class DynamicPair(Protocol):
    """A dynamic teacher D (``dynamic``) trained next to a student, with exports of both."""

    dynamic: nn.Module
    report: ExpansionReport

    def forward_student(self, *args: Any, **kwargs: Any) -> Any: ...

    def forward_dynamic(self, *args: Any, **kwargs: Any) -> Any: ...

    def export_student(self) -> nn.Module: ...

    def export_dynamic(self) -> nn.Module: ...

    def grad_scales(self) -> dict[torch.Tensor, float]: ...


def trained_student_module(pair: DynamicPair) -> nn.Module:
    """The module that runs the student's forward pass (its class, buffers and structure).

    For a GPDModel it is the parameter-free module of the student view; for an
    UnsharedPair the student itself.
    """
    student = pair.student  # type: ignore[attr-defined]
    return student.module if isinstance(pair, GPDModel) else student


class UnsharedPair(PairRoles, nn.Module):
    """D and a student with separate parameters, both starting as the same function.

    Built with :meth:`from_expanded` from a verified GPDModel: ``dynamic`` is a deep copy
    of its D, ``student`` a standalone module holding the student's parameters read out
    of D (so, at ratio r, the student's weights equal the original student's, and the
    pair computes D == S exactly as the shared pair does). ``parameters()`` are D's and
    the student's; one optimizer trains both. Unlike the shared pair, a plain SGD step
    on the student's weights has no r^2 scaling (docs/method.md, "Per-layer steps").
    """

    @renamed_kwargs(teacher="dynamic")
    def __init__(self, dynamic: nn.Module, student: nn.Module, report: ExpansionReport) -> None:
        super().__init__()
        self.dynamic = dynamic
        self.student = student
        self.report = report
        self.paper_scales = {}

    @classmethod
    def from_expanded(cls, model: GPDModel) -> UnsharedPair:
        """Separate copies of ``model``'s D and student (the student with its own BatchNorm statistics)."""
        dynamic = copy.deepcopy(model.dynamic)
        student = model.student.materialize(dict(model.dynamic.named_parameters()))
        pair = cls(dynamic, student, model.report)
        pair._use_paper_steps(model.paper_scales)  # D steps as the shared pair's D does; the student plainly
        pair.train(model.training)
        return pair

    @property
    def ratio(self) -> float:
        return self.report.ratio

    def forward_student(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)

    def export_student(self) -> nn.Module:
        """A standalone copy of the student, the blocks of every registered branch kind merged."""
        exported = RULES.merge_branches(self.student)
        exported.train(self.training)
        return exported

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, shared=False"
