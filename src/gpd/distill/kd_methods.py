"""Logit-based KD methods against a frozen static teacher, built by name.

A method is a callable ``(student_logits, teacher_logits, target, epoch) -> loss``
that already includes its weight; GPD applies the same method to the student and to
its dynamic teacher (the GPD paper, docs/method.md). The weight of the cross-entropy
terms that go with a method (``ce_weight``, e.g. 0.1 for KD in mdistiller's CIFAR-100
setting) is applied by the Distiller, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpd.errors import ConfigError
from gpd.losses import dkd, kd

KD_METHODS = ("none", "kd", "dkd")  # logit-based; "reviewkd" (features) lives in the Distiller

KDLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "float | None"], torch.Tensor]


@dataclass(frozen=True)
class HintonKD:
    """``weight * T^2 KL(softmax(z_T/T) || softmax(z/T))``."""

    temperature: float = 4.0
    weight: float = 1.0

    def __call__(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        return self.weight * kd(logits, teacher_logits, self.temperature)


@dataclass(frozen=True)
class DecoupledKD:
    """DKD (alpha * TCKD + beta * NCKD), ramped up linearly over ``warmup_epochs``.

    The labels' range is not checked here, at every step (a host sync each time): the
    trainer checks the data set's labels once (:func:`gpd.data.labels.check_labels`)."""

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: float = 20.0

    def __call__(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        ramp = 1.0 if not self.warmup_epochs or epoch is None else min(epoch / self.warmup_epochs, 1.0)
        return ramp * dkd(logits, teacher_logits, target, self.alpha, self.beta, self.temperature, check_targets=False)


def build_kd_method(method: str, **options: float) -> KDLoss | None:
    """The KD loss called ``method`` with its options, or None for ``"none"``."""
    if method == "none":
        return None
    if method == "kd":
        return HintonKD(**options)
    if method == "dkd":
        return DecoupledKD(**options)
    raise ConfigError(f"unknown KD method '{method}'; use one of {', '.join(KD_METHODS)}")
