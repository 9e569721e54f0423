"""The backward pass of one GPD step: the distiller's phases composed, in each memory mode.

joint: one forward of D and the student (``part="all"``), one backward of the summed loss.
sequential: D's phase (``part="dynamic"``) forward and backward first (its graph is freed),
then the student's phase (``part="student"``). SCE sends no gradient into D's logits, so
both modes give the same gradients; the sequential mode's peak activation memory is that of
the larger network alone instead of both together, at the cost of a second backward launch.
probed: the sequential step, also measuring each phase's gradient norm.

Every phase is one call of the distiller's forward, so a DDP or compiled wrapper sees it;
each returns one type (:class:`~gpd.distill.DistillerOutput` or :class:`~gpd.distill.DynamicPart`),
and the loss is summed in one place (:func:`~gpd.distill.total_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from gpd.distill import Distiller, DistillerOutput, DynamicPart, total_loss
from gpd.inputs import Inputs
from gpd.sharing.steps import grad_norm

Backward = Callable[[torch.Tensor], None]


def joint_backward(
    module: Callable[..., DistillerOutput], x: Inputs, y: torch.Tensor, epoch: float, autocast, backward: Backward
) -> DistillerOutput:
    """``module`` is the Distiller, or its DDP / compiled wrapper. Returns the loss terms and
    the student's logits (for the training accuracy)."""
    with autocast():
        out = module(x, y, epoch=epoch, part="all")
    backward(out.loss)
    return out


def sequential_backward(
    module: Callable[..., Any],
    x: Inputs,
    y: torch.Tensor,
    epoch: float,
    autocast,
    backward: Backward,
    first_half: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> DistillerOutput:
    """D's phase, then the student's, each one forward of ``module`` (the Distiller, or its DDP
    or compiled wrapper: ``part=`` selects the phase, so a wrapper sees both calls).

    ``first_half``: a context for D's forward and backward; under DDP its ``no_sync``, so
    that D's gradients stay local and the student's backward all-reduces the sum of both,
    bucket by bucket while it runs, as gradient accumulation does.
    """
    with first_half():
        with autocast():
            dynamic: DynamicPart = module(x, y, epoch=epoch, part="dynamic")
        if dynamic.losses:
            backward(total_loss(dynamic.losses))
    with autocast():
        student: DistillerOutput = module(x, y, epoch=epoch, part="student", dynamic=_handoff(dynamic))
    backward(student.loss)
    return DistillerOutput({**dynamic.losses, **student.losses}, student.student_logits)


def probed_backward(
    distiller: Distiller,
    x: Inputs,
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
        dynamic = distiller(x, y, epoch=epoch, part="dynamic")
    backward(total_loss(dynamic.losses))
    dynamic_norm = grad_norm(params, scales)
    after_dynamic = {p: p.grad.clone() for p in params if p.grad is not None}
    with autocast():
        student = distiller(x, y, epoch=epoch, part="student", dynamic=_handoff(dynamic))
    backward(student.loss)
    student_norm = grad_norm(params, scales, minus=after_dynamic)
    return DistillerOutput({**dynamic.losses, **student.losses}, student.student_logits), (dynamic_norm, student_norm)


def _handoff(dynamic: DynamicPart) -> DynamicPart:
    """What the student's phase reads of D's: the static teacher's targets and D's logits, detached,
    without D's loss terms, so that a DDP or compiled wrapper gets no tensor of D's (freed) graph."""
    logits = dynamic.dynamic_logits.detach() if dynamic.dynamic_logits is not None else None
    return DynamicPart({}, logits, dynamic.targets)
