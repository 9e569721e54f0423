"""Test-set accuracy of one or more models in a single pass over the data."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


@torch.no_grad()
def accuracy(
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 accuracy in percent of each named model; the data are read once for all."""
    correct = {name: torch.zeros((), dtype=torch.long, device=device) for name in models}
    total = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for name, model in models.items():
            correct[name] += (model(x).argmax(dim=-1) == y).sum()
        total += y.numel()
    return {name: 100.0 * float(c) / max(total, 1) for name, c in correct.items()}
