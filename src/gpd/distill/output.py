"""What a :class:`~gpd.distill.Distiller` call returns, and the two functions every caller shares.

One contract, as mdistiller's distillers have it: a call returns its weighted loss terms
(a dict the training loop sums with :func:`total_loss`, the one place the loss is summed)
and the student's logits. The two phases of a step (D's, then the student's, for the
sequential memory mode and the gradient probe) each have one typed result:
:class:`DynamicPart` and :class:`DistillerOutput`. :func:`logits_of`, the one place where a
model's output becomes logits, lives in :mod:`gpd.outputs` (the lowest layer, so that gpd.io
reads it too) and is importable from here as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from gpd.outputs import LogitsFn, logits_of

__all__ = ["DistillerOutput", "DynamicPart", "LogitsFn", "StaticTargets", "logits_of", "total_loss"]


class StaticTargets(NamedTuple):
    """What the frozen static teacher says about a batch: logits and, for ReviewKD, stage features."""

    logits: torch.Tensor | None
    features: list[torch.Tensor]


class DistillerOutput(NamedTuple):
    """The weighted loss terms of a batch and the student's logits (for the training accuracy).

    A tuple, so ``losses, logits = distiller(x, y)`` unpacks it; ``.loss`` is their sum."""

    losses: dict[str, torch.Tensor]
    student_logits: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The training loss: :func:`total_loss` of the terms."""
        return total_loss(self.losses)


class DynamicPart(NamedTuple):
    """The first phase of a step: D's loss terms (``{}`` without a dynamic teacher), D's logits
    (``None`` then) and the static teacher's targets, which the student's phase reuses."""

    losses: dict[str, torch.Tensor]
    dynamic_logits: torch.Tensor | None
    targets: StaticTargets


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The plain sum of the terms in the dict's order (the float rounding of ``sum(losses.values())``).

    The one loss sum of gpd: the training loop, the memory modes and timm's task all use it, so
    that they train on the same number. No terms: a zero tensor."""
    if not losses:
        return torch.zeros(())
    total: Any = sum(losses.values())
    return total
