"""gpd's logit-based KD methods against a frozen static teacher: none, Hinton KD, DKD, a plain loss.

ReviewKD, which fuses stage features through heads of its own, is in
:mod:`gpd.distill.reviewkd`; the registry by name is :mod:`gpd.distill.registry`. GPD
applies the same method to the student and to its dynamic teacher (the GPD paper,
docs/method.md). Each method's loss already includes its weight; the weight of the
cross-entropy terms that go with it (``ce_weight``, from :class:`KDOptions`, e.g. 0.1 for
KD in mdistiller's CIFAR-100 setting) is applied by the Distiller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpd.distill.method import KDMethod, KDOptions, NoOptions, StaticTargets, hard_labels
from gpd.losses import dkd, kd

# A plain logit loss ``(student_logits, teacher_logits, target, epoch) -> loss``, its weight included.
KDLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "float | None"], torch.Tensor]


@dataclass
class HintonKDOptions(KDOptions):
    """The options of Hinton KD: the ``kd.*`` keys of a run config (besides ``kd.method``)."""

    temperature: float = 4.0  # for kd
    weight: float = 1.0  # for kd

    def problems(self) -> list[str]:
        return [] if self.temperature > 0 else [f"temperature must be > 0, got {self.temperature}"]


@dataclass
class DKDOptions(KDOptions):
    """The options of DKD: the ``dkd.*`` keys of a run config."""

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: float = 20.0  # linear ramp of the DKD loss

    def problems(self) -> list[str]:
        return [] if self.temperature > 0 else [f"temperature must be > 0, got {self.temperature}"]


class NoKD(KDMethod):
    """No KD method: no static teacher, no KD terms."""

    name = "none"
    title = "no-KD"
    Options = NoOptions
    needs_teacher = False


class LogitKD(KDMethod):
    """A method on the logits alone: one term ``kd_<role>``, from :meth:`loss`."""

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def losses(
        self,
        role: str,
        logits: torch.Tensor,
        features: list[torch.Tensor],
        targets: StaticTargets,
        y: torch.Tensor,
        epoch: float | None,
    ) -> dict[str, torch.Tensor]:
        assert targets.logits is not None, "a KD method needs the static teacher's logits"
        return {f"kd_{role}": self.loss(logits, targets.logits, hard_labels(y), epoch)}


class HintonKD(LogitKD):
    """``weight * T^2 KL(softmax(z_T/T) || softmax(z/T))``."""

    name = "kd"
    title = "KD"
    section = "kd"
    Options = HintonKDOptions
    options: HintonKDOptions

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        return self.options.weight * kd(logits, teacher_logits, self.options.temperature)


class DecoupledKD(LogitKD):
    """DKD (alpha * TCKD + beta * NCKD), ramped up linearly over ``warmup_epochs``.

    The labels' range is not checked here, at every step (a host sync each time): the
    trainer checks the data set's labels once (:func:`gpd.data.labels.check_labels`)."""

    name = "dkd"
    title = "DKD"
    section = "dkd"
    Options = DKDOptions
    options: DKDOptions

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        o = self.options
        ramp = 1.0 if not o.warmup_epochs or epoch is None else min(epoch / o.warmup_epochs, 1.0)
        return ramp * dkd(logits, teacher_logits, target, o.alpha, o.beta, o.temperature, check_targets=False)


class CallableKD(LogitKD):
    """A user's own logit loss (a :data:`KDLoss`), as ``Distiller(kd=loss_fn)`` takes it."""

    name = "custom"
    title = "custom KD"

    def __init__(self, loss_fn: KDLoss, options: KDOptions | None = None) -> None:
        super().__init__(options)
        self.loss_fn = loss_fn

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        return self.loss_fn(logits, teacher_logits, target, epoch)

    def extra_repr(self) -> str:
        return f"{self.loss_fn!r}, {self.options}"


CallableKDOptions = KDOptions  # the old name of a plain loss's options (ce_weight alone)

__all__ = [
    "CallableKD",
    "CallableKDOptions",
    "DKDOptions",
    "DecoupledKD",
    "HintonKD",
    "HintonKDOptions",
    "KDLoss",
    "LogitKD",
    "NoKD",
]
