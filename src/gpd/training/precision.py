"""Numerical precision of a training step: fp32, bf16 autocast, or fp16 autocast with a gradient scaler."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from gpd.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context, backward and optimizer step for ``train.precision``.

    Parameters and optimizer state stay in float32 in every mode; only the forward
    computation runs in the lower precision. fp16 scales the loss (``torch.amp.GradScaler``)
    so that small gradients do not flush to zero; bf16 has float32's range and needs no
    scaler. Both run on CPU too (torch's CPU autocast and ``GradScaler("cpu")``), where they
    are tested; CPUs without native half-precision kernels run them slower than fp32.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in _DTYPES:
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got '{name}'")
        if name != "fp32" and not torch.amp.is_autocast_available(device.type):
            raise ConfigError(f"train.precision={name}: torch has no autocast for {device.type} devices; use fp32")
        self.name = name
        self.device = device
        self.dtype = _DTYPES[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
