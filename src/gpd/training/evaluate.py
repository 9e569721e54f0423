"""Test-set accuracy of one or more models in a single pass over the data."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


@torch.no_grad()
def correct_counts(
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Correct top-1 predictions of each named model, and the number of samples (as tensors,
    so that processes can sum them); the data are read once for all models."""
    correct = {name: torch.zeros((), dtype=torch.long, device=device) for name in models}
    total = torch.zeros((), dtype=torch.long, device=device)
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            for name, model in models.items():
                correct[name] += (model(x).argmax(dim=-1) == y).sum()
        total += y.numel()
    return correct, total


def accuracy(
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 accuracy in percent of each named model."""
    correct, total = correct_counts(models, batches, device, channels_last)
    return {name: 100.0 * float(c) / max(int(total), 1) for name, c in correct.items()}
