"""The Distiller's old public names, kept for one release (gpd.deprecated): each warns and delegates.

The trained network was ``gpd`` (with a dynamic teacher) or ``plain`` (the baseline) and is
``network``; ``student_module()`` is the ``student`` property; the KD method's heads were
``review_heads`` and are ``kd_method.heads``. The halves of a step
(``static_targets``, ``dynamic_losses``, ``student_output``, ...) were public so that the
sequential memory mode could call them; the phases are now ``distiller(x, y, part="dynamic")``
and ``distiller(x, y, part="student", dynamic=...)``, each with one typed result. The
functions here become the Distiller's methods (its class body assigns them).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gpd.deprecated import REMOVAL, warn_renamed
from gpd.distill.output import DistillerOutput, DynamicPart, StaticTargets
from gpd.errors import ArgumentError

if TYPE_CHECKING:
    from gpd.distill.distiller import Distiller
    from gpd.distill.pair import DynamicPair

DYNAMIC_PHASE = "distiller(x, y, part='dynamic')"
STUDENT_PHASE = "distiller(x, y, part='student', dynamic=...)"


def forward_arguments(part: str, dynamic: DynamicPart | None, old: dict[str, Any]) -> DynamicPart | None:
    """``dynamic`` from ``forward``'s old keywords: ``with_student_logits`` (ignored: every call
    returns a DistillerOutput), ``targets`` and ``dynamic_logits`` (or ``teacher_logits``)."""
    if "with_student_logits" in old:
        old.pop("with_student_logits")
        warnings.warn(
            f"Distiller.forward(with_student_logits=...) is deprecated: every call returns a DistillerOutput "
            f"(losses, student_logits) ({REMOVAL})",
            DeprecationWarning,
            stacklevel=4,
        )
    if "teacher_logits" in old:
        if "dynamic_logits" in old:
            raise TypeError(
                "Distiller.forward() got teacher_logits= and dynamic_logits=; teacher_logits is the old name "
                "of dynamic_logits, give only dynamic_logits"
            )
        warn_renamed("Distiller.forward(teacher_logits=...)", "dynamic_logits=... (itself deprecated)", stacklevel=4)
        old["dynamic_logits"] = old.pop("teacher_logits")
    unknown = sorted(set(old) - {"targets", "dynamic_logits"})
    if unknown:
        raise TypeError(f"Distiller.forward() got unexpected keyword arguments {unknown}")
    if not old:
        return dynamic
    if dynamic is not None:
        raise TypeError("Distiller.forward() got dynamic= and the old targets= / dynamic_logits=; give only dynamic=")
    warn_renamed(
        "Distiller.forward(targets=..., dynamic_logits=...)",
        "dynamic=<the DynamicPart of part='dynamic'>",
        stacklevel=4,
    )
    targets = old.get("targets")
    if targets is None:
        if part == "student":
            raise ArgumentError("part='student' needs the static teacher's targets of part='dynamic'")
        targets = StaticTargets(None, [])
    return DynamicPart({}, old.get("dynamic_logits"), targets)


def step_rule_of_keyword(compensate_step: bool, step_rule: str) -> str:
    """``Distiller(compensate_step=...)``'s step rule: True -> "plain", False -> "paper" (warns)."""
    warn_renamed("Distiller(compensate_step=...)", "step_rule='paper' or 'plain'", stacklevel=4)
    if step_rule != "paper":
        raise TypeError("Distiller() got compensate_step= and step_rule=; give only step_rule")
    return "plain" if compensate_step else "paper"


def gpd_network(self: Distiller) -> DynamicPair | None:
    """Deprecated: :attr:`Distiller.network` when there is a dynamic teacher, else None."""
    warn_renamed("Distiller.gpd", "Distiller.network")
    return self._pair()


def plain_network(self: Distiller) -> nn.Module | None:
    """Deprecated: :attr:`Distiller.network` of the baseline (no dynamic teacher), else None."""
    warn_renamed("Distiller.plain", "Distiller.network")
    return None if self.has_dynamic_teacher else self.network


def review_heads(self: Distiller) -> nn.ModuleDict:
    """Deprecated: the KD method's heads by role, ``Distiller.kd_method.heads``."""
    warn_renamed("Distiller.review_heads", "Distiller.kd_method.heads")
    return self.kd_method.heads


def student_module(self: Distiller) -> nn.Module:
    """Deprecated: the :attr:`Distiller.student` property."""
    warn_renamed("Distiller.student_module()", "Distiller.student")
    return self.student


def teacher_logits(self: Distiller, x: torch.Tensor) -> torch.Tensor:
    """Deprecated: the old name of :meth:`Distiller.dynamic_logits` (D's logits, not the static teacher's)."""
    warn_renamed("Distiller.teacher_logits()", "Distiller.dynamic_logits()")
    return self.dynamic_logits(x)


def static_targets(self: Distiller, x: torch.Tensor) -> StaticTargets:
    """Deprecated: ``distiller(x, y, part="dynamic").targets``."""
    warn_renamed("Distiller.static_targets()", f"{DYNAMIC_PHASE}.targets")
    return self._static_targets(x)


def dynamic_losses(
    self: Distiller, x: torch.Tensor, y: torch.Tensor, targets: StaticTargets, *, epoch: float | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Deprecated: D's terms and logits, now the ``losses`` and ``dynamic_logits`` of part="dynamic"."""
    warn_renamed("Distiller.dynamic_losses()", DYNAMIC_PHASE)
    return _dynamic_pair(self, x, y, targets, epoch)


def teacher_losses(
    self: Distiller, x: torch.Tensor, y: torch.Tensor, targets: StaticTargets, *, epoch: float | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Deprecated: the older name of ``dynamic_losses`` (D's terms, keyed ``*_dynamic``)."""
    warn_renamed("Distiller.teacher_losses()", DYNAMIC_PHASE)
    return _dynamic_pair(self, x, y, targets, epoch)


def _dynamic_pair(
    self: Distiller, x: torch.Tensor, y: torch.Tensor, targets: StaticTargets, epoch: float | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """D's terms and logits as the old half-methods returned them (a pair, not a DynamicPart)."""
    part = self._dynamic_terms(x, y, targets, epoch)
    return part.losses, part.dynamic_logits


def student_output(
    self: Distiller,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: StaticTargets,
    dynamic_logits: torch.Tensor | None = None,
    *,
    epoch: float | None = None,
    **old: Any,
) -> DistillerOutput:
    """Deprecated: the student's terms and logits, now ``distiller(x, y, part="student", dynamic=...)``."""
    warn_renamed("Distiller.student_output()", STUDENT_PHASE)
    return self._student_output(x, y, _dynamic_of(targets, dynamic_logits, old), epoch)


def student_losses(
    self: Distiller,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: StaticTargets,
    dynamic_logits: torch.Tensor | None = None,
    *,
    epoch: float | None = None,
    **old: Any,
) -> dict[str, torch.Tensor]:
    """Deprecated: the ``losses`` of ``distiller(x, y, part="student", dynamic=...)``."""
    warn_renamed("Distiller.student_losses()", f"{STUDENT_PHASE}.losses")
    return self._student_output(x, y, _dynamic_of(targets, dynamic_logits, old), epoch).losses


def _dynamic_of(targets: StaticTargets, dynamic_logits: torch.Tensor | None, old: dict[str, Any]) -> DynamicPart:
    if "teacher_logits" in old:
        warn_renamed("teacher_logits=...", "dynamic_logits=...", stacklevel=4)
        dynamic_logits = old.pop("teacher_logits")
    if old:
        raise TypeError(f"unexpected keyword arguments {sorted(old)}")
    return DynamicPart({}, dynamic_logits, targets)
