"""The training checkpoint: the full training state in one file, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds everything that decides what the next step computes: D's weights
and the student's BatchNorm statistics, the optimizer, scheduler, gradient scaler and
EMA states, the epoch and step, the weight selection, the metrics rows, and the random
number generators of each process (see :mod:`gpd.training.rng`). The data order needs
no state of its own: each epoch's shuffle is seeded by (seed, epoch). Every value is a
tensor or a plain container, so the restricted unpickler accepts it and no code runs on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpd.errors import CheckpointError, first_line
from gpd.io.atomic import atomic_torch_save

CHECKPOINT_FORMAT = "gpd-checkpoint/2"


def checkpoint_payload(
    *,
    config: dict[str, Any],
    epoch: int,
    num_updates: int,
    selection: dict[str, Any],
    metrics: list[dict[str, Any]],
    static_teacher_acc: float | None,
    static_teacher_fingerprint: str | None,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    scaler: dict[str, Any],
    ema: dict[str, Any] | None,
    rng: list[dict[str, Any]],
) -> dict[str, Any]:
    """The state a checkpoint holds, key by key (without the format key :func:`save_checkpoint` adds).

    ``model``: the distiller's state_dict without the frozen static teacher; ``rng``: one
    entry per process, in rank order; ``metrics``: the rows of every epoch so far."""
    return {
        "config": config,
        "epoch": epoch,
        "num_updates": num_updates,
        "selection": selection,
        "metrics": metrics,
        "static_teacher_acc": static_teacher_acc,
        "static_teacher_fingerprint": static_teacher_fingerprint,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "ema": ema,
        "rng": rng,
    }


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint in place."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with one-line errors."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: there is no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, garbage, or objects the safe unpickler refuses
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(err)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a gpd training checkpoint of format {CHECKPOINT_FORMAT} (found {found})")
    return state
