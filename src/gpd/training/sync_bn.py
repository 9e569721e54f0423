"""BatchNorm statistics over the global batch under DDP (``train.sync_bn``).

torch's :class:`torch.nn.SyncBatchNorm` runs on GPUs only (DDP refuses it on CPU
modules); on CPU processes (gloo), :class:`CPUSyncBatchNorm` computes the same statistics
with differentiable all-reduces, so the option can be used, and tested, without a GPU. The conversion moves each BatchNorm's own
parameter and buffer dictionaries into the new module: D's parameters stay the same
objects (the student's slices still point at them), and the student's view, whose
BatchNorms hold buffers but no parameters, converts just as well.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: the gradient of a sum is the sum of the gradients.
    (torch.distributed.nn.functional's version is deprecated, and the functional collectives
    that replace it do not back-propagate.)"""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the batch of every process (gloo)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._syncs():
            return super().forward(input)
        return self._sync_forward(input)

    def _syncs(self) -> bool:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size() > 1

    def _sync_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() // x.shape[1])])
        total = all_reduce_sum(local)
        count = total[-1]
        mean = total[:-1] / count
        centered = x - mean.view(shape)
        var = all_reduce_sum((centered * centered).sum(dims)) / count
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean.detach(), var.detach(), count.detach())
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        factor = 1.0 / float(cast(torch.Tensor, self.num_batches_tracked)) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)  # type: ignore[union-attr]
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)  # type: ignore[union-attr]


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> int:
    """Replace every BatchNorm under ``module`` by torch's SyncBatchNorm (GPUs) or
    :class:`CPUSyncBatchNorm` (CPU), in place, keeping its parameter and buffer objects;
    returns how many were converted."""
    kind = CPUSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm
    converted = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, (nn.SyncBatchNorm, CPUSyncBatchNorm)):
                sync = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                sync._parameters = child._parameters
                sync._buffers = child._buffers
                sync._non_persistent_buffers_set = child._non_persistent_buffers_set
                sync.train(child.training)
                setattr(parent, name, sync)
                converted += 1
    return converted
