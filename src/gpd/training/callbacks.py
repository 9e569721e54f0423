"""What a run writes, as callbacks of the loop: metrics.csv, TensorBoard, the checkpoint, student.pt.

The loop (:mod:`gpd.training.loop`) trains and evaluates and writes nothing; it calls
each callback's hooks in order: :meth:`Callback.on_fit_start` before the first epoch,
:meth:`Callback.on_epoch_end` after each epoch (with its metrics row), :meth:`Callback.close`
when the loop ends (also on an error), :meth:`Callback.on_fit_end` after the last epoch;
:meth:`Callback.on_resume` when a run continues from its checkpoint. Every process calls
every hook (the checkpoint gathers each process's random state); only rank 0 writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from gpd.io import checkpoint as checkpoint_io
from gpd.io.layout import RunLayout
from gpd.io.metrics import MetricsCSV
from gpd.io.student import save_student, student_payload
from gpd.training.distributed import gather_objects
from gpd.training.policy import RunPolicy
from gpd.training.rng import capture_rng
from gpd.training.rows import tensorboard_tag

if TYPE_CHECKING:
    from pathlib import Path

    from gpd.training.loop import TrainLoop


class Callback:
    """A hook of the loop; every method does nothing unless overridden."""

    def on_resume(self, trainer: TrainLoop, state: dict[str, Any], path: Path) -> None:
        """After the trainer restored its state from the checkpoint ``path``."""

    def on_fit_start(self, trainer: TrainLoop) -> None:
        pass

    def on_epoch_end(self, trainer: TrainLoop, epoch: int, row: dict[str, Any]) -> None:
        pass

    def close(self, trainer: TrainLoop) -> None:
        """The loop has ended, finished or not."""

    def on_fit_end(self, trainer: TrainLoop) -> None:
        """Every epoch is done."""


class MetricsFile(Callback):
    """metrics.csv: each epoch's row, written before its checkpoint (which holds the rows too),
    so a crash between the two writes leaves neither a gap nor a duplicate after a resume."""

    def __init__(self, layout: RunLayout) -> None:
        self.metrics = MetricsCSV(layout.metrics)

    def on_resume(self, trainer: TrainLoop, state: dict[str, Any], path: Path) -> None:
        if not trainer.ctx.is_main:
            return
        if "metrics" in state:  # the rows of the epochs the checkpoint holds: no gap, no extra row
            self.metrics.rewrite(trainer.rows)
        else:  # older checkpoints hold no rows: keep the file's rows up to the checkpoint's epoch
            self.metrics.truncate(int(state["epoch"]))

    def on_epoch_end(self, trainer: TrainLoop, epoch: int, row: dict[str, Any]) -> None:
        if trainer.ctx.is_main:
            self.metrics.write(row)


class Checkpoint(Callback):
    """checkpoint.pt: the full training state after each epoch (atomically)."""

    def __init__(self, layout: RunLayout) -> None:
        self.path = layout.checkpoint

    def on_epoch_end(self, trainer: TrainLoop, epoch: int, row: dict[str, Any]) -> None:
        rng = gather_objects(capture_rng(), trainer.ctx)  # every process's random state
        if trainer.ctx.is_main:
            checkpoint_io.save_checkpoint(training_state(trainer, epoch, rng), self.path)


def training_state(trainer: TrainLoop, epoch: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """What the checkpoint of ``epoch`` holds (the format: :func:`gpd.io.checkpoint.checkpoint_payload`)."""
    model = {k: v for k, v in trainer.distiller.state_dict().items() if not k.startswith("static_teacher.")}
    return checkpoint_io.checkpoint_payload(
        config=OmegaConf.to_container(OmegaConf.structured(trainer.cfg)),  # type: ignore[arg-type]
        epoch=epoch,
        num_updates=trainer.num_updates,
        selection=trainer.selection.state_dict(),
        metrics=trainer.rows,
        static_teacher_acc=trainer.static_teacher_acc,
        static_teacher_fingerprint=trainer.static_teacher_fingerprint,
        model=model,
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        scaler=trainer.precision.state_dict(),
        ema=trainer.ema.state_dict() if trainer.ema is not None else None,
        rng=rng,
    )


class TensorBoard(Callback):
    """tensorboard/: every number of each epoch's row, grouped into sections."""

    def __init__(self, layout: RunLayout) -> None:
        self.folder = layout.tensorboard
        self.writer: Any = None

    def on_fit_start(self, trainer: TrainLoop) -> None:
        if not trainer.ctx.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import

        self.writer = SummaryWriter(str(self.folder), purge_step=trainer.start_epoch)

    def on_epoch_end(self, trainer: TrainLoop, epoch: int, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(tensorboard_tag(key), value, epoch)
        self.writer.flush()

    def close(self, trainer: TrainLoop) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ExportStudent(Callback):
    """student.pt: the standalone student of the weights the selection chose, with what evaluation needs."""

    def __init__(self, layout: RunLayout) -> None:
        self.path = layout.student

    def on_fit_end(self, trainer: TrainLoop) -> None:
        if trainer.ctx.is_main:
            save_student(student_payload(trainer.selected_student(), **student_metadata(trainer)), self.path)


def student_metadata(trainer: TrainLoop) -> dict[str, Any]:
    """The metadata of student.pt: the data it expects and how its weights were chosen."""
    choice, data, cfg = trainer.selection.choice, trainer.data, trainer.cfg
    assert choice is not None, "the export follows at least one epoch"
    return {
        "data": data.name,
        "input_size": list(data.input_size),
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": list(data.class_names),
        "student_acc": choice.test_acc,
        "val_acc": choice.val_acc,
        "epoch": choice.epoch,
        "selected_on": "validation" if choice.val_acc is not None else "nothing (last epoch)",
        "gpd_ratio": cfg.gpd.ratio if cfg.gpd.enabled else None,
        "weights": choice.weights,
    }


def run_callbacks(layout: RunLayout, policy: RunPolicy) -> list[Callback]:
    """The files a run writes into ``layout``, in the order each epoch writes them."""
    callbacks: list[Callback] = [MetricsFile(layout), Checkpoint(layout)]
    if policy.tensorboard:
        callbacks.append(TensorBoard(layout))
    callbacks.append(ExportStudent(layout))
    return callbacks
