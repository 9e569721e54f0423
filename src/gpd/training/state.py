"""A run's progress and what its callbacks may read of it.

:class:`TrainState` is what the loop advances (epoch, optimisation steps, the metrics rows,
the static teacher's accuracy and task metrics) and the checkpoint records (:mod:`gpd.io.checkpoint`);
:class:`RunView` is the declared rest of a run that the callbacks read: the objects the
checkpoint saves, the trained network and its EMA, the weight selection. Neither knows the
config: the trainer builds both from it once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpd.io.checkpoint import TrainingObjects
from gpd.training.distributed import DistContext
from gpd.training.selection import standalone_student

if TYPE_CHECKING:
    import torch
    from timm.utils import ModelEmaV3
    from torch import nn

    from gpd.training.precision import Precision
    from gpd.training.selection import WeightSelection


@dataclass
class TrainState:
    """The progress of a run, advanced by the loop, read by the callbacks, kept in the checkpoint."""

    epoch: int = 0  # the last finished epoch (a resumed run's: its checkpoint's)
    num_updates: int = 0  # optimisation steps so far: the scheduler's and the EMA's step
    rows: list[dict[str, Any]] = field(default_factory=list)  # every epoch's metrics row
    static_teacher_acc: float | None = None  # measured once: the static teacher is frozen
    # its task metrics ("static_teacher:miou" ... in percent), measured with it; None: not measured
    # (classification, or a checkpoint of an older gpd, whose resumed run measures them again)
    static_teacher_metrics: dict[str, float] | None = None
    static_teacher_fingerprint: str | None = None  # of the static teacher's weights (a resume checks it)
    rng: dict[str, Any] | None = None  # a resumed process's random state, restored before its first step

    @property
    def next_epoch(self) -> int:
        """The epoch the loop trains next."""
        return self.epoch + 1


@dataclass(frozen=True)
class RunView:
    """What the callbacks read of a run besides its :class:`TrainState`.

    ``config``: the resolved config as plain containers, read at each checkpoint (the run
    directory, and with it ``output_dir``, is settled after the run is built);
    ``description``: student.pt's metadata of the run (data, normalisation, classes, ratio)."""

    ctx: DistContext
    config: Callable[[], dict[str, Any]]
    description: dict[str, Any]
    distiller: nn.Module
    network: nn.Module  # the trained network: D with its student view, or the plain student
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    ema: ModelEmaV3 | None
    selection: WeightSelection

    def checkpointed(self) -> TrainingObjects:
        """The objects whose state the checkpoint saves and a resume restores."""
        return TrainingObjects(
            model=self.distiller,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.precision,
            ema=self.ema,
            selection=self.selection,
        )

    def selected_student(self) -> nn.Module:
        """The standalone student of the weights the selection chose (what student.pt holds), on the CPU."""
        return self.selection.student(lambda weights: standalone_student(self.network, self.ema, weights))
