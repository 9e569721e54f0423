"""The semantic segmentation task: logits ``(N, C, H, W)`` against masks ``(N, H, W)`` of class indices.

GPD's objective at every pixel (docs/method.md, "The objective"): CE at every labelled
pixel (``ignore_index``, 255 by default, marks the others), SCE between the student and
``sg(D)`` at every pixel with the paper's ε (the Distiller's ``sce_eps``, weight λ its
``sce_weight``). Logits of another size than the masks (a model with an output stride) are
resized to the masks, bilinearly with ``align_corners=False``, before CE and DKD.

Models: a tensor output, or a mapping with ``"out"`` (torchvision's segmentation models) and
optionally ``"aux"``, whose CE is added as ``ce_aux_<role>`` with weight ``aux_weight``
(0.5, as torchvision's segmentation reference trains them); else what
:func:`gpd.outputs.logits_of` reads (a ``"logits"`` key or attribute: transformers).

KD against a static teacher: ``kd`` and ``dkd`` mean their per-pixel versions, ``cwd`` is
channel-wise distillation (:mod:`gpd.distill.tasks.dense_kd`); ``reviewkd`` is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from gpd.distill.method import KDMethod, TapRole
from gpd.distill.tasks.base import KDArgument, Task
from gpd.distill.tasks.dense_kd import ChannelWiseKD, PixelDKD, PixelKD
from gpd.distill.tasks.metrics import Metric, SegmentationMetrics, to_mask_size
from gpd.errors import ArgumentError
from gpd.losses import IGNORE_INDEX, pixel_cross_entropy, pixel_sce
from gpd.outputs import LogitsFn, logits_of

REVIEWKD_REASON = (
    "kd='reviewkd' is refused with task='segmentation': its fusion heads review a classifier's pooled "
    "stages; use kd='kd', 'dkd' or 'cwd'"
)


class SegmentationTask(Task):
    """Per-pixel GPD; options ``ignore_index``, ``aux_weight``, ``label_smoothing`` and
    ``check_targets`` (refuse a mask value that is neither a class nor the ignore index; it reads
    the masks back to the host at each step: pass False where the data set checked them)."""

    name = "segmentation"
    title = "segmentation"
    kd_methods: ClassVar[Mapping[str, type[KDMethod]]] = {"kd": PixelKD, "dkd": PixelDKD, "cwd": ChannelWiseKD}
    refused_kd: ClassVar[Mapping[str, str]] = {"reviewkd": REVIEWKD_REASON}

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        aux_weight: float = 0.5,
        label_smoothing: float = 0.0,
        check_targets: bool = True,
    ) -> None:
        if aux_weight < 0:
            raise ArgumentError(f"aux_weight must be >= 0, got {aux_weight}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ArgumentError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index, self.aux_weight = ignore_index, aux_weight
        self.label_smoothing, self.check_targets = label_smoothing, check_targets

    def logits(self, output: Any, logits_fn: LogitsFn | None = None) -> torch.Tensor:
        if logits_fn is None and isinstance(output, Mapping) and isinstance(output.get("out"), torch.Tensor):
            logits = output["out"]
        else:
            logits = logits_of(output, logits_fn)
        self.check_logits(logits)
        return logits

    def check_logits(self, logits: torch.Tensor) -> None:
        if logits.dim() < 3:
            raise ArgumentError(
                f"task='segmentation' needs logits (batch, classes, height, width); the model gives "
                f"{tuple(logits.shape)}, a classifier's: use task='classification'"
            )

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = to_mask_size(logits, y)
        return pixel_cross_entropy(logits, y, self.ignore_index, self.label_smoothing, check_targets=self.check_targets)

    def supervised_losses(
        self, role: TapRole, output: Any, logits: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        losses = super().supervised_losses(role, output, logits, y)
        aux = output.get("aux") if isinstance(output, Mapping) else None
        if isinstance(aux, torch.Tensor) and self.aux_weight:
            losses[f"{self.loss_name}_aux_{role}"] = self.aux_weight * self.supervised_loss(aux, y)
        return losses

    def consistency(self, student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float) -> torch.Tensor:
        return pixel_sce(student_logits, dynamic_logits, eps)

    def metric(self) -> Metric:
        return SegmentationMetrics(ignore_index=self.ignore_index)

    def kd_method(self, kd: KDArgument, options: Mapping[str, Any] | None = None) -> KDMethod:
        method = super().kd_method(kd, options)
        if isinstance(method, PixelDKD):
            method.ignore_index = self.ignore_index
        return method


__all__ = ["REVIEWKD_REASON", "SegmentationTask"]
