"""The KD methods of the segmentation task: per-pixel KD, per-pixel DKD and channel-wise distillation.

Each takes the options (and config section) of the classification method of its name, so
``kd="kd"`` or ``kd="dkd"`` with ``task="segmentation"`` means the per-pixel version
(:class:`gpd.distill.tasks.segmentation.SegmentationTask` maps them); ``"cwd"`` exists for
segmentation only. The losses are those of :mod:`gpd.losses.segmentation` and
:mod:`gpd.losses.cwd`; static-teacher maps of another size are moved onto the student's grid
there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpd.distill.kd_methods import DKDOptions, HintonKDOptions, LogitKD
from gpd.distill.method import KDOptions
from gpd.distill.tasks.metrics import to_mask_size
from gpd.losses import CWD_LOSS_WEIGHT, CWD_TAU, IGNORE_INDEX, channel_wise_kd, pixel_dkd, pixel_kd


@dataclass
class PixelKDOptions(HintonKDOptions):
    """Hinton KD's options (``kd.*``); in the API the temperature defaults to 1, the plain
    per-pixel KL of pixel-wise distillation (Liu et al., CVPR 2019)."""

    temperature: float = 1.0


@dataclass
class CWDOptions(KDOptions):
    """The options of channel-wise distillation (``cwd.*``): mmrazor's published setting on
    segmentation logits (PSPNet, Cityscapes): ``tau = 1``, weight 5 (:mod:`gpd.losses.cwd`)."""

    tau: float = CWD_TAU
    weight: float = CWD_LOSS_WEIGHT

    def problems(self) -> list[str]:
        return [] if self.tau > 0 else [f"tau must be > 0, got {self.tau}"]


class PixelKD(LogitKD):
    """``weight * T^2 KL(softmax(z_T/T) || softmax(z/T))`` at every pixel, averaged over all pixels."""

    name = "kd"
    title = "per-pixel KD"
    section = "kd"
    Options = PixelKDOptions
    options: PixelKDOptions

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        return self.options.weight * pixel_kd(logits, teacher_logits, self.options.temperature)


class PixelDKD(LogitKD):
    """DKD at every labelled pixel (split at the pixel's label), ramped up as DKD is; the logits are
    resized to the mask size first. ``ignore_index`` is the task's (set by the task)."""

    name = "dkd"
    title = "per-pixel DKD"
    section = "dkd"
    Options = DKDOptions
    options: DKDOptions
    ignore_index: int = IGNORE_INDEX

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        o = self.options
        ramp = 1.0 if not o.warmup_epochs or epoch is None else min(epoch / o.warmup_epochs, 1.0)
        student = to_mask_size(logits, target)
        loss = pixel_dkd(
            student, teacher_logits, target, o.alpha, o.beta, o.temperature, self.ignore_index, check_targets=False
        )
        return ramp * loss


class ChannelWiseKD(LogitKD):
    """CWD (Shu et al., ICCV 2021): per channel, a softmax over positions, then KL with temperature ``tau``."""

    name = "cwd"
    title = "CWD"
    section = "cwd"
    Options = CWDOptions
    options: CWDOptions

    def loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, epoch: float | None
    ) -> torch.Tensor:
        return self.options.weight * channel_wise_kd(logits, teacher_logits, self.options.tau)


__all__ = ["CWDOptions", "ChannelWiseKD", "PixelDKD", "PixelKD", "PixelKDOptions"]
