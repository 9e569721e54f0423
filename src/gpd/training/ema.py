"""The exponential moving average of the trained weights, with a decay that means the same
for every batch size, number of processes and run length.

A per-step decay d averages over about 1 / (1 - d) steps, so the same d averages over
more images when the batch grows and over a larger share of a short run than of a
long one: timm's 0.9998 is about one ImageNet epoch at batch 256, but most of a
Fashion-MNIST demo. torchvision's reference scripts therefore scale the decay with
the images per step. gpd sets the averaging horizon instead, in epochs
(``train.ema_epochs``) or in training images (``train.ema_images``), and derives the
per-step decay d = exp(-images_per_step / horizon_images): after one horizon, the
weights of its start count e^-1 as much as fresh ones. An explicit per-step
``train.ema_decay`` (older configs) is used as it is. timm's warm-up
(``train.ema_warmup``, on by default) caps the decay at 1 - (1 + step)^(-2/3) so that
the average does not hold on to the initial weights.
"""

from __future__ import annotations

import math

from gpd.errors import ConfigError


def ema_decay_per_step(
    *,
    decay: float | None,
    epochs: float | None,
    images: int | None,
    images_per_step: int,
    steps_per_epoch: int,
) -> float:
    """The per-step decay of ``train.ema_decay`` / ``train.ema_images`` / ``train.ema_epochs``
    (in that order of precedence; setting both of the first two is an error)."""
    if decay is not None and images is not None:
        raise ConfigError("set one of train.ema_decay (per step) and train.ema_images (a horizon), not both")
    if decay is not None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {decay:g}")
        return decay
    horizon: float  # in images
    if images is None:
        if epochs is None or epochs <= 0:
            raise ConfigError(f"train.ema_epochs must be a positive number of epochs, got {epochs}")
        horizon = epochs * steps_per_epoch * images_per_step
    else:
        horizon = images
    if horizon <= 0:
        raise ConfigError(f"train.ema_images must be a positive number of images, got {horizon}")
    return math.exp(-images_per_step / horizon)
