"""The backward pass of one GPD step, in the two memory modes.

joint: one forward of D and the student, one backward of the summed loss.
sequential: D's forward and backward first (its graph is freed), then the student's
forward and backward. SCE sends no gradient into D's logits, so both modes give the
same gradients; the sequential mode's peak activation memory is that of the larger
network alone instead of both together, at the cost of a second backward launch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from gpd.distill import Distiller, DistillerOutput
from gpd.sharing.steps import grad_norm

Backward = Callable[[torch.Tensor], None]
LossDict = dict[str, torch.Tensor]


def joint_backward(
    module: Callable[..., DistillerOutput], x: torch.Tensor, y: torch.Tensor, epoch: float, autocast, backward: Backward
) -> DistillerOutput:
    """``module`` is the Distiller, or its DDP / compiled wrapper. Returns the loss terms and
    the student's logits (for the training accuracy)."""
    with autocast():
        out = module(x, y, epoch=epoch, with_student_logits=True)
    backward(_sum(out.losses))
    return out


def sequential_backward(
    module: Callable[..., Any],
    x: torch.Tensor,
    y: torch.Tensor,
    epoch: float,
    autocast,
    backward: Backward,
    first_half: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> DistillerOutput:
    """D's half, then the student's, each one forward of ``module`` (the Distiller, or its DDP
    or compiled wrapper: ``part=`` selects the half, so a wrapper sees both calls).

    ``first_half``: a context for D's forward and backward; under DDP its ``no_sync``, so
    that D's gradients stay local and the student's backward all-reduces the sum of both,
    bucket by bucket while it runs, as gradient accumulation does.
    """
    with first_half():
        with autocast():
            losses, dynamic_logits, targets = module(x, y, epoch=epoch, part="dynamic")
        if losses:
            backward(_sum(losses))
    dynamic_logits = dynamic_logits.detach() if dynamic_logits is not None else None
    with autocast():
        student = module(
            x, y, epoch=epoch, part="student", targets=targets, dynamic_logits=dynamic_logits, with_student_logits=True
        )
    backward(_sum(student.losses))
    return DistillerOutput({**losses, **student.losses}, student.student_logits)


def probed_backward(
    distiller: Distiller,
    x: torch.Tensor,
    y: torch.Tensor,
    epoch: float,
    autocast,
    backward: Backward,
    params: Sequence[torch.Tensor],
    scales: dict[torch.Tensor, float],
) -> tuple[DistillerOutput, tuple[torch.Tensor, torch.Tensor]]:
    """The sequential step, also measuring the gradient norm of D's terms and of the student's.

    Same gradients as either mode; costs a copy of the gradients after D's backward.
    Norms are in the coordinates the clipping uses (``scales``, see gpd.sharing.steps).
    """
    with autocast():
        targets = distiller.static_targets(x)
        losses, dynamic_logits = distiller.dynamic_losses(x, y, targets, epoch=epoch)
    backward(_sum(losses))
    dynamic_norm = grad_norm(params, scales)
    after_dynamic = {p: p.grad.clone() for p in params if p.grad is not None}
    detached = dynamic_logits.detach() if dynamic_logits is not None else None
    with autocast():
        student = distiller.student_output(x, y, targets, detached, epoch=epoch)
    backward(_sum(student.losses))
    student_norm = grad_norm(params, scales, minus=after_dynamic)
    return DistillerOutput({**losses, **student.losses}, student.student_logits), (dynamic_norm, student_norm)


def _sum(losses: LossDict) -> torch.Tensor:
    """The training loss: the plain sum of the terms, in their order (the same float rounding as ``sum``)."""
    total: Any = sum(losses.values())
    return total
