"""The KD methods against a frozen static teacher, and their registry by name.

The logit-based methods (Hinton KD, DKD) are here; ReviewKD, which fuses stage
features through heads of its own, is in :mod:`gpd.distill.reviewkd`. GPD applies the
same method to the student and to its dynamic teacher (the GPD paper, docs/method.md).
Each method's loss already includes its weight; the weight of the cross-entropy terms
that go with it (``ce_weight``, e.g. 0.1 for KD in mdistiller's CIFAR-100 setting) is
applied by the Distiller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gpd.choices import KDMethodName, check_choice
from gpd.distill.method import KDMethod, StaticTargets, hard_labels
from gpd.distill.reviewkd import ReviewKD, ReviewKDOptions
from gpd.errors import ConfigError
from gpd.losses import dkd, kd

# A plain logit loss ``(student_logits, teacher_logits, target, epoch) -> loss``, its weight included.
KDLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "float | None"], torch.Tensor]


@dataclass
class HintonKDOptions:
    """The options of Hinton KD: the ``kd.*`` keys of a run config (besides ``kd.method``)."""

    temperature: float = 4.0  # for kd
    weight: float = 1.0  # for kd
    ce_weight: float = 1.0  # weight of the CE terms (student and D) with kd; mdistiller's CIFAR-100: 0.1


@dataclass
class DKDOptions:
    """The options of DKD: the ``dkd.*`` keys of a run config."""

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: float = 20.0  # linear ramp of the DKD loss
    ce_weight: float = 1.0  # weight of the CE terms (student and D) with dkd


class NoKD(KDMethod):
    """No KD method: no static teacher, no KD terms."""

    name = "none"
    title = "no-KD"
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
        heads: nn.ModuleDict,
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


@dataclass
class CallableKDOptions:
    ce_weight: float = 1.0


class CallableKD(LogitKD):
    """A user's own logit loss (a :data:`KDLoss`), as ``Distiller(kd=loss_fn)`` takes it."""

    name = "custom"
    title = "custom KD"
    Options = CallableKDOptions

    def __init__(self, loss_fn: KDLoss, options: CallableKDOptions | None = None) -> None:
        super().__init__(options)
        self.loss_fn = loss_fn

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        return self.loss_fn(logits, teacher_logits, target, epoch)

    def __repr__(self) -> str:
        return f"CallableKD({self.loss_fn!r})"


# kd.method -> the method class; the names are those of gpd.choices.KDMethodName.
KD_METHODS: dict[str, type[KDMethod]] = {cls.name: cls for cls in (NoKD, HintonKD, DecoupledKD, ReviewKD)}


def kd_method_class(name: str, key: str = "kd") -> type[KDMethod]:
    """The method class called ``name`` (a ``kd.method`` value); any other name is refused."""
    return KD_METHODS[check_choice(key, name, KDMethodName)]


def build_kd_method(kd: str | KDMethod | KDLoss, options: Mapping[str, Any] | None = None) -> KDMethod:
    """The method ``Distiller(kd=..., kd_options=...)`` asks for: a name with its options, a
    method object as it is, or a plain logit loss (whose only option is ``ce_weight``)."""
    if isinstance(kd, KDMethod):
        if options:
            raise ConfigError(f"kd_options go with a method name; {kd!r} has its options already")
        return kd
    if isinstance(kd, str):
        return kd_method_class(kd).from_options(options)
    return CallableKD(kd, CallableKD.parse_options(options))


__all__ = [
    "KD_METHODS",
    "CallableKD",
    "DKDOptions",
    "DecoupledKD",
    "HintonKD",
    "HintonKDOptions",
    "KDLoss",
    "KDMethod",
    "LogitKD",
    "NoKD",
    "ReviewKD",
    "ReviewKDOptions",
    "build_kd_method",
    "kd_method_class",
]
