"""The training checkpoint: the full training state in one file, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds everything that decides what the next step computes: D's weights
and the student's BatchNorm statistics, the optimizer, scheduler, gradient scaler and
EMA states, the epoch and step, the weight selection, the metrics rows, and the random
number generators of each process (see :mod:`gpd.training.rng`). The data order needs
no state of its own: each epoch's shuffle is seeded by (seed, epoch). Every value is a
tensor or a plain container, so the restricted unpickler accepts it and no code runs on load.

The format is written and read in one place, as a pair: :func:`save_training_state`
composes the payload from a run's progress and its stateful objects, and
:func:`load_training_state` puts it back into them. The model's own key renames of older
checkpoints are the model's (its ``load_state_dict``), the metrics columns' are
:func:`gpd.deprecated.upgrade_rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from gpd.deprecated import upgrade_rows
from gpd.errors import CheckpointError, first_line
from gpd.io.atomic import atomic_torch_save

CHECKPOINT_FORMAT = "gpd-checkpoint/2"


class Stateful(Protocol):
    """An object whose state the checkpoint holds (optimizer, scheduler, scaler, EMA, selection)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


class Progress(Protocol):
    """What the checkpoint records of a run's progress: :class:`gpd.training.state.TrainState`."""

    epoch: int
    num_updates: int
    rows: list[dict[str, Any]]
    static_teacher_acc: float | None
    static_teacher_metrics: dict[str, float] | None
    static_teacher_fingerprint: str | None
    rng: dict[str, Any] | None


@dataclass(frozen=True)
class TrainingObjects:
    """The objects whose state a checkpoint holds besides the progress.

    ``model``: the distiller; its keys under ``frozen`` (the static teacher, rebuilt from its
    own file and checked by its fingerprint) are left out."""

    model: nn.Module
    optimizer: Stateful
    scheduler: Stateful
    scaler: Stateful
    ema: Stateful | None
    selection: Stateful
    frozen: str = "static_teacher."


def save_training_state(
    path: Path, progress: Progress, objects: TrainingObjects, *, config: dict[str, Any], rng: list[dict[str, Any]]
) -> None:
    """Write the checkpoint of ``progress.epoch`` (atomically).

    ``config``: the resolved config as plain containers; ``rng``: every process's random
    state, in rank order; the metrics rows are those of every epoch so far."""
    model = {k: v for k, v in objects.model.state_dict().items() if not k.startswith(objects.frozen)}
    save_checkpoint(
        {
            "config": config,
            "epoch": progress.epoch,
            "num_updates": progress.num_updates,
            "selection": objects.selection.state_dict(),
            "metrics": progress.rows,
            "static_teacher_acc": progress.static_teacher_acc,
            "static_teacher_metrics": progress.static_teacher_metrics,
            "static_teacher_fingerprint": progress.static_teacher_fingerprint,
            "model": model,
            "optimizer": objects.optimizer.state_dict(),
            "scheduler": objects.scheduler.state_dict(),
            "scaler": objects.scaler.state_dict(),
            "ema": objects.ema.state_dict() if objects.ema is not None else None,
            "rng": rng,
        },
        path,
    )


def load_training_state(
    path: Path,
    progress: Progress,
    objects: TrainingObjects,
    *,
    rank: int = 0,
    world_size: int = 1,
    log: Callable[[str], None] = print,
) -> None:
    """Continue from the checkpoint ``path``: the objects' states, the counters, this process's
    random state (``progress.rng``) and, on rank 0, the metrics rows.

    Refuses a checkpoint of another model or of other static teacher weights. A checkpoint
    of another number of processes continues from fresh random states (said through ``log``)."""
    state = load_checkpoint(path)
    _check_same_static_teacher(state, progress.static_teacher_fingerprint, path)
    result = objects.model.load_state_dict(state["model"], strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(objects.frozen)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path} holds another model than this config builds (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); resume with the run's own config.yaml"
        )
    objects.optimizer.load_state_dict(state["optimizer"])
    objects.scheduler.load_state_dict(state["scheduler"])
    objects.scaler.load_state_dict(state.get("scaler", {}))
    if objects.ema is not None:
        if state.get("ema") is None:
            raise CheckpointError(f"{path} has no EMA weights but train.ema=true; resume with train.ema=false")
        objects.ema.load_state_dict(state["ema"])
    progress.num_updates = int(state["num_updates"])
    progress.epoch = int(state["epoch"])
    if state.get("selection") is not None:
        objects.selection.load_state_dict(state["selection"])
    progress.static_teacher_acc = state.get("static_teacher_acc")
    progress.static_teacher_metrics = state.get("static_teacher_metrics")  # older checkpoints: none
    rng_states = state["rng"]
    if len(rng_states) == world_size:
        progress.rng = rng_states[rank]
    else:
        log(
            f"warning: the checkpoint was written by {len(rng_states)} processes, this run has "
            f"{world_size}: random augmentation continues from fresh seeds (not bit-exact)"
        )
    if rank == 0 and "metrics" in state:  # the rows of the epochs the checkpoint holds (older ones hold none)
        progress.rows = upgrade_rows([dict(row) for row in state["metrics"]], f"the metrics rows of {path}")


def _check_same_static_teacher(state: dict[str, Any], now: str | None, path: Path) -> None:
    recorded = state.get("static_teacher_fingerprint")
    if recorded is not None and recorded != now:
        raise CheckpointError(
            f"{path} was trained against other static teacher weights than teacher.checkpoint holds now "
            f"(fingerprint {recorded[:12]} != {str(now)[:12]}); resume with the original teacher file, "
            "or start a new run"
        )


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
