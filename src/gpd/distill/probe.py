"""Probing forward passes that leave a model as they found it.

A KD method sizes its heads by running the student, D and the static teacher once on an
example batch (:meth:`gpd.distill.KDMethod.build`). Those passes run in eval mode, and
afterwards every module's train/eval mode and every buffer (BatchNorm statistics and any
other) is restored, so that building a Distiller changes nothing in the networks it was
given: this matters when fine-tuning, where the statistics are the pretrained ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def unchanged_state(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block; restore every module's mode and every buffer on exit."""
    modes = {module: module.training for module in model.modules()}
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                saved = buffers.get(name)
                if saved is not None and not torch.equal(buffer, saved):
                    buffer.copy_(saved)
