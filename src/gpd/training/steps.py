"""The backward pass of one GPD step, in the two memory modes.

joint: one forward of D and the student, one backward of the summed loss.
sequential: D's forward and backward first (its graph is freed), then the student's
forward and backward. SCE sends no gradient into D's logits, so both modes give the
same gradients; the sequential mode's peak activation memory is that of the larger
network alone instead of both together, at the cost of a second backward launch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from gpd.distill import Distiller
from gpd.sharing.steps import grad_norm

Backward = Callable[[torch.Tensor], None]
LossDict = dict[str, torch.Tensor]


def joint_backward(
    module: Callable[..., LossDict], x: torch.Tensor, y: torch.Tensor, epoch: float, autocast, backward: Backward
) -> LossDict:
    """``module`` is the Distiller, or its DDP / compiled wrapper."""
    with autocast():
        losses = module(x, y, epoch=epoch)
    backward(sum(losses.values()))  # type: ignore[arg-type]
    return losses


def sequential_backward(
    module: Callable[..., Any],
    x: torch.Tensor,
    y: torch.Tensor,
    epoch: float,
    autocast,
    backward: Backward,
    first_half: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> LossDict:
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
            backward(sum(losses.values()))  # type: ignore[arg-type]
    dynamic_logits = dynamic_logits.detach() if dynamic_logits is not None else None
    with autocast():
        student_losses = module(x, y, epoch=epoch, part="student", targets=targets, dynamic_logits=dynamic_logits)
    backward(sum(student_losses.values()))  # type: ignore[arg-type]
    return {**losses, **student_losses}


def probed_backward(
    distiller: Distiller,
    x: torch.Tensor,
    y: torch.Tensor,
    epoch: float,
    autocast,
    backward: Backward,
    params: list[torch.Tensor],
    scales: dict[torch.Tensor, float],
) -> tuple[LossDict, tuple[torch.Tensor, torch.Tensor]]:
    """The sequential step, also measuring the gradient norm of D's terms and of the student's.

    Same gradients as either mode; costs a copy of the gradients after D's backward.
    Norms are in the coordinates the clipping uses (``scales``, see gpd.sharing.steps).
    """
    with autocast():
        targets = distiller.static_targets(x)
        losses, dynamic_logits = distiller.dynamic_losses(x, y, targets, epoch=epoch)
    backward(sum(losses.values()))  # type: ignore[arg-type]
    dynamic_norm = grad_norm(params, scales)
    after_dynamic = {p: p.grad.clone() for p in params if p.grad is not None}
    with autocast():
        student_losses = distiller.student_losses(x, y, targets, dynamic_logits.detach(), epoch=epoch)  # type: ignore[union-attr]
    backward(sum(student_losses.values()))  # type: ignore[arg-type]
    student_norm = grad_norm(params, scales, minus=after_dynamic)
    return {**losses, **student_losses}, (dynamic_norm, student_norm)
