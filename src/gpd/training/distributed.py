"""One process per device under torchrun: who this process is, and the few collectives the loop needs.

Outside torchrun (no WORLD_SIZE in the environment) everything here is a no-op for a
single process, so the training loop has one code path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from gpd.errors import ConfigError, GPDError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of ``train.device``; under torchrun ``cuda``/``auto`` means this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but no CUDA device is available; use train.device=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={device} but only {torch.cuda.device_count()} CUDA devices are visible")
    return device


def init_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun set up (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(), resolve_device(device_name)
    ctx = DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op alone): rank 0 writes the export after the last epoch while
    the others would already tear the process group down under it."""
    if ctx.enabled:
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place; returns it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext, parameters: bool = False) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), and its parameters if asked."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        tensors = list(module.buffers()) + (list(module.parameters()) if parameters else [])
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``obj``, in rank order (a list of one outside torchrun)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def run_on_main(fn: Callable[[], T], ctx: DistContext) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its error) to every process.

    Used for the run directory: one process decides and creates it; if that fails,
    every process stops with the same one-line error instead of waiting forever.
    """
    if not ctx.enabled:
        return fn()
    payload: list[Any] = [None]
    if ctx.is_main:
        try:
            payload[0] = ("ok", fn())
        except GPDError as err:
            payload[0] = ("error", err)
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise value
    return value


def shard(dataset: Dataset, ctx: DistContext) -> Dataset:
    """This process's share of an evaluation set: every world_size-th sample, none repeated
    (unlike DistributedSampler, which pads), so summed counts give the exact accuracy."""
    if not ctx.enabled:
        return dataset
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))  # type: ignore[arg-type]
