"""GPDModel: a dynamic teacher D and the student that is a channel slice of it.

What ``gpd.expand`` returns, so it lives in the expansion package: its exports merge branch
blocks through the rule set's branch kinds (:data:`gpd.expansion.rules.RULES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from gpd.channel_maps import WidthPlan
from gpd.choices import StepRule
from gpd.deprecated import dynamic_role, renamed_kwargs, upgrade_state_keys, warn_renamed
from gpd.errors import ArgumentError
from gpd.expansion.rules import RULES
from gpd.sharing import StudentView
from gpd.sharing.steps import install_paper_steps

if TYPE_CHECKING:
    from gpd.expansion.roles import LayerRoles

Role = Literal["student", "dynamic"]


@dataclass
class ExpansionReport:
    """What :func:`gpd.expand` did: the roles it found, the rules it used, the errors it measured."""

    ratio: float
    roles: LayerRoles
    rules_used: dict[str, list[str]] = field(default_factory=dict)
    layout: str = "tiled"  # of D's copies: "tiled" or "interleaved" (gpd.channel_maps)
    dynamic_error: float | None = None  # float32 (the model's dtype) relative errors of D and of the student view
    student_error: float | None = None
    checked_in_float64: bool = False  # float32 rounding exceeded the tolerance; float64 confirmed exactness
    noise_std: float = 0.0  # relative symmetry-breaking noise added to D's copies after verification
    noise_error: float | None = None  # D's relative error against the student once the noise is added

    @property
    def teacher_error(self) -> float | None:
        """Deprecated: the old name of ``dynamic_error`` (D's relative error)."""
        warn_renamed("ExpansionReport.teacher_error", "ExpansionReport.dynamic_error")
        return self.dynamic_error


class PairRoles:
    """What every dynamic-teacher pair shares: D's forward, the role chosen at the call,
    D's export, and the paper's per-layer steps on D's tensors. A pair defines
    ``dynamic`` (D) and ``forward_student``, and calls :meth:`_use_paper_steps` once built.

    ``paper_scales`` maps D's parameter names to their ``ParamSlice.paper_scale``
    (only those not 1); with the step rule "paper" a gradient hook on each of those
    tensors multiplies its gradient by ``1 / paper_scale**2`` (:mod:`gpd.sharing.steps`).
    The hooks are part of the pair: they are set up again when it is copied or unpickled.

    D was called ``teacher`` before it was named the dynamic teacher everywhere (gpd.deprecated):
    reading ``teacher``, ``forward_teacher``, ``export_teacher`` and ``role="teacher"`` still work
    and warn, and a state_dict with D under ``teacher.*`` still loads. Assigning ``teacher`` is
    not supported (nn.Module's own ``__setattr__`` is kept): assign ``dynamic``.
    """

    dynamic: nn.Module
    paper_scales: dict[str, float]

    def _use_paper_steps(self, scales: dict[str, float]) -> None:
        self.paper_scales = dict(scales)
        install_paper_steps(self.dynamic, self.paper_scales)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        if getattr(self, "paper_scales", None):  # deepcopy and pickle do not carry tensor hooks
            install_paper_steps(self.dynamic, self.paper_scales)

    def grad_scales(self) -> dict[torch.Tensor, float]:
        """Each of D's parameters with a paper scale, for :func:`gpd.sharing.steps.clip_grad_norm_`."""
        params = dict(self.dynamic.named_parameters())
        return {params[name]: scale for name, scale in getattr(self, "paper_scales", {}).items()}

    def forward_student(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def forward_dynamic(self, *args: Any, **kwargs: Any) -> Any:
        return self.dynamic(*args, **kwargs)

    def forward(self, *args: Any, role: Role, **kwargs: Any) -> Any:
        role = dynamic_role(role)  # type: ignore[assignment]
        if role == "student":
            return self.forward_student(*args, **kwargs)
        if role == "dynamic":
            return self.forward_dynamic(*args, **kwargs)
        raise ArgumentError(f"role must be 'student' or 'dynamic', got {role!r}")

    def export_dynamic(self) -> nn.Module:
        """A standalone copy of D, a plain wide network (branch blocks merged)."""
        return RULES.merge_branches(self.dynamic)

    # -- the old names (one release) ---------------------------------------------------

    @property
    def teacher(self) -> nn.Module:
        """Deprecated: the old name of ``dynamic`` (D), to read only."""
        warn_renamed(f"{type(self).__name__}.teacher", f"{type(self).__name__}.dynamic")
        return self.dynamic

    def forward_teacher(self, *args: Any, **kwargs: Any) -> Any:
        """Deprecated: the old name of :meth:`forward_dynamic`."""
        warn_renamed(f"{type(self).__name__}.forward_teacher()", f"{type(self).__name__}.forward_dynamic()")
        return self.forward_dynamic(*args, **kwargs)

    def export_teacher(self) -> nn.Module:
        """Deprecated: the old name of :meth:`export_dynamic`."""
        warn_renamed(f"{type(self).__name__}.export_teacher()", f"{type(self).__name__}.export_dynamic()")
        return self.export_dynamic()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Older state_dicts hold D under ``teacher.*``: renamed to ``dynamic.*`` (with a warning)
        before this pair's children load. Only keys below this pair's own prefix are read."""
        upgrade_state_keys(state_dict, prefix, "teacher", "dynamic", "the dynamic teacher D")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]


class GPDModel(PairRoles, nn.Module):
    """The dynamic teacher D (``dynamic``) and the student that shares its parameters.

    ``dynamic`` is an ordinary wide network of the student's own module classes; its
    parameters are all the trainable parameters. The student's parameters are read
    out of them on every student forward pass, so one optimizer over
    ``model.parameters()`` trains both. The student's BatchNorm statistics are its own
    buffers, stored under ``student.``.

    The role is chosen at each call: :meth:`forward_student`, :meth:`forward_dynamic`,
    or ``model(x, role="student" | "dynamic")``.
    """

    @renamed_kwargs(teacher="dynamic")
    def __init__(
        self,
        dynamic: nn.Module,
        student: StudentView,
        plan: WidthPlan,
        report: ExpansionReport,
        paper_scales: dict[str, float] | None = None,
    ) -> None:
        """``paper_scales``: D's tensors to step as the paper's layout does (see :class:`PairRoles`);
        None or empty for plain steps."""
        super().__init__()
        self.dynamic = dynamic
        self.student = student
        self.plan = plan
        self.report = report
        self._use_paper_steps(paper_scales or {})

    @property
    def ratio(self) -> float:
        return self.plan.ratio

    def student_parameters(self) -> dict[str, torch.Tensor]:
        """The student's parameters, derived from D's (differentiable views where possible)."""
        return self.student.derive(dict(self.dynamic.named_parameters()))

    def forward_student(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(dict(self.dynamic.named_parameters()), *args, **kwargs)

    def export_student(self) -> nn.Module:
        """A standalone student of the original class; its state_dict loads strictly into a fresh one.

        Multi-branch blocks, if the student has them, are merged into plain convolutions.
        """
        exported = RULES.merge_branches(self.student.materialize(dict(self.dynamic.named_parameters())))
        exported.train(self.training)
        return exported

    @property
    def step_rule(self) -> StepRule:
        """ "paper" (D's tensors stepped as in the paper's layout) or "plain" (plain networks' steps)."""
        return self.student.step_rule

    def extra_repr(self) -> str:
        return f"ratio={self.plan.ratio}, steps={self.step_rule}"
