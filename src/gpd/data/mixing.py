"""Mixup and CutMix of training batches (the DeiT recipe), with timm's ``Mixup``.

A mixed batch has soft targets: rows of class probabilities that sum to 1. Label
smoothing is then applied by Mixup (its ``label_smoothing``), once; the
:class:`~gpd.distill.Distiller` uses soft targets as they are, without smoothing them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.data import Mixup

from gpd.errors import ConfigError


def build_mixup(
    data: Any, num_classes: int, label_smoothing: float = 0.0, batch_size: int | None = None
) -> Mixup | None:
    """timm's Mixup for ``data.mixup``/``data.cutmix`` (alphas; 0 turns each off), or None when both are off.

    ``data`` is a ``DataConfig`` (or anything with its ``mixup``, ``cutmix``, ``mixup_prob``
    and ``mixup_switch_prob``). Mixing pairs each image with the one at the mirrored
    position of the batch, so ``batch_size`` (per process) must be even.
    """
    if data.mixup <= 0 and data.cutmix <= 0:
        return None
    if batch_size is not None and batch_size % 2:
        raise ConfigError(
            f"data.mixup/data.cutmix need an even batch on each process, got {batch_size} images per process; "
            "change train.batch_size"
        )
    return Mixup(
        mixup_alpha=float(data.mixup),
        cutmix_alpha=float(data.cutmix),
        prob=float(data.mixup_prob),
        switch_prob=float(data.mixup_switch_prob),
        mode="batch",
        label_smoothing=float(label_smoothing),
        num_classes=int(num_classes),
    )


def mix_batch(mixup: Mixup | None, x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """``(x, y)`` unchanged without Mixup; else the mixed images and their soft targets (N, K).

    Mixup and CutMix mix images: a batch whose input is a mapping (token ids, masks) is refused."""
    if mixup is None:
        return x, y
    if not isinstance(x, torch.Tensor):
        what = f"a mapping of {', '.join(map(str, x))}" if isinstance(x, Mapping) else f"a {type(x).__name__}"
        raise ConfigError(
            f"data.mixup/data.cutmix mix image tensors, but this batch's input is {what}; "
            "set data.mixup=0 and data.cutmix=0"
        )
    return mixup(x, y)
