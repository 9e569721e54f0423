"""What a run writes, as callbacks of the loop: metrics.csv, TensorBoard, the checkpoint, student.pt.

The loop (:mod:`gpd.training.loop`) trains and evaluates and writes nothing; it calls
each callback's hooks in order: :meth:`Callback.on_fit_start` before the first epoch,
:meth:`Callback.on_epoch_end` after each epoch (with its metrics row), :meth:`Callback.close`
when the loop ends (also on an error), :meth:`Callback.on_fit_end` after the last epoch;
:meth:`Callback.on_resume` when a run continues from its checkpoint. Every process calls
every hook (the checkpoint gathers each process's random state); only rank 0 writes.

A callback reads the run's :class:`~gpd.training.state.TrainState` and the declared
:class:`~gpd.training.state.RunView`, nothing else of the run. The order of the hooks is
declared: a callback names the kinds of callbacks that must run before it
(:attr:`Callback.after`), and :class:`Callbacks` refuses a list that breaks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from gpd.io import checkpoint as checkpoint_io
from gpd.io.layout import RunLayout
from gpd.io.metrics import MetricsCSV
from gpd.io.student import save_student, student_payload
from gpd.training.distributed import gather_objects
from gpd.training.policy import RunPolicy
from gpd.training.rng import capture_rng
from gpd.training.rows import tensorboard_tag

if TYPE_CHECKING:
    from gpd.training.state import RunView, TrainState


class Callback:
    """A hook of the loop; every method does nothing unless overridden.

    ``kind``: the callback's name in other callbacks' ``after``; ``after``: the kinds that
    must come before this callback in a run's list, when the list holds them."""

    kind: ClassVar[str] = ""
    after: ClassVar[tuple[str, ...]] = ()

    def on_resume(self, state: TrainState, run: RunView) -> None:
        """After the run restored its state from its checkpoint."""

    def on_fit_start(self, state: TrainState, run: RunView) -> None:
        pass

    def on_epoch_end(self, state: TrainState, run: RunView, row: dict[str, Any]) -> None:
        """After epoch ``state.epoch``, whose metrics row is ``row`` (also ``state.rows[-1]``)."""

    def close(self, state: TrainState, run: RunView) -> None:
        """The loop has ended, finished or not."""

    def on_fit_end(self, state: TrainState, run: RunView) -> None:
        """Every epoch is done."""


def check_callback_order(callbacks: Sequence[Callback]) -> None:
    """Refuse a list in which a callback comes before one its :attr:`~Callback.after` names."""
    for i, callback in enumerate(callbacks):
        for later in callbacks[i + 1 :]:
            if later.kind and later.kind in callback.after:
                raise ValueError(
                    f"callback {type(callback).__name__} must run after the {later.kind} callback "
                    f"({type(later).__name__}), which comes later in the list; put it before"
                )


class Callbacks:
    """A run's callbacks in their checked order, with the run they read: the loop calls each hook once."""

    def __init__(self, callbacks: Sequence[Callback], run: RunView) -> None:
        check_callback_order(callbacks)
        self.callbacks, self.run = list(callbacks), run

    def on_resume(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_resume(state, self.run)

    def on_fit_start(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(state, self.run)

    def on_epoch_end(self, state: TrainState, row: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(state, self.run, row)

    def close(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.close(state, self.run)

    def on_fit_end(self, state: TrainState) -> None:
        for callback in self.callbacks:
            callback.on_fit_end(state, self.run)


class MetricsFile(Callback):
    """metrics.csv: each epoch's row, written before its checkpoint (which holds the rows too),
    so a crash between the two writes leaves neither a gap nor a duplicate after a resume."""

    kind = "metrics"

    def __init__(self, layout: RunLayout) -> None:
        self.metrics = MetricsCSV(layout.metrics)

    def on_resume(self, state: TrainState, run: RunView) -> None:
        if not run.ctx.is_main:
            return
        if state.rows:  # the rows of the epochs the checkpoint holds: no gap, no extra row
            self.metrics.rewrite(state.rows)
        else:  # older checkpoints hold no rows: keep the file's rows up to the checkpoint's epoch
            self.metrics.truncate(state.epoch)

    def on_epoch_end(self, state: TrainState, run: RunView, row: dict[str, Any]) -> None:
        if run.ctx.is_main:
            self.metrics.write(row)


class Checkpoint(Callback):
    """checkpoint.pt: the full training state after each epoch (atomically), with the rows of
    every epoch so far: it comes after metrics.csv's row (see :class:`MetricsFile`)."""

    kind = "checkpoint"
    after = ("metrics",)

    def __init__(self, layout: RunLayout) -> None:
        self.path = layout.checkpoint

    def on_epoch_end(self, state: TrainState, run: RunView, row: dict[str, Any]) -> None:
        rng = gather_objects(capture_rng(), run.ctx)  # every process's random state
        if run.ctx.is_main:
            checkpoint_io.save_training_state(self.path, state, run.checkpointed(), config=run.config(), rng=rng)


class TensorBoard(Callback):
    """tensorboard/: every number of each epoch's row, grouped into sections."""

    kind = "tensorboard"

    def __init__(self, layout: RunLayout) -> None:
        self.folder = layout.tensorboard
        self.writer: Any = None

    def on_fit_start(self, state: TrainState, run: RunView) -> None:
        if not run.ctx.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import

        self.writer = SummaryWriter(str(self.folder), purge_step=state.next_epoch)

    def on_epoch_end(self, state: TrainState, run: RunView, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(tensorboard_tag(key), value, state.epoch)
        self.writer.flush()

    def close(self, state: TrainState, run: RunView) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ExportStudent(Callback):
    """student.pt: the standalone student of the weights the selection chose, with what evaluation
    needs; the last of the run's files."""

    kind = "student"
    after = ("metrics", "checkpoint", "tensorboard")

    def __init__(self, layout: RunLayout) -> None:
        self.path = layout.student

    def on_fit_end(self, state: TrainState, run: RunView) -> None:
        if run.ctx.is_main:
            save_student(student_payload(run.selected_student(), **student_metadata(run)), self.path)


def student_metadata(run: RunView) -> dict[str, Any]:
    """The metadata of student.pt: the run's description (data, normalisation, classes, ratio)
    and how its weights were chosen."""
    choice = run.selection.choice
    assert choice is not None, "the export follows at least one epoch"
    d = run.description
    return {
        "data": d["data"],
        "input_size": d["input_size"],
        "mean": d["mean"],
        "std": d["std"],
        "class_names": d["class_names"],
        "student_acc": choice.test_acc,
        "val_acc": choice.val_acc,
        "epoch": choice.epoch,
        "selected_on": "validation" if choice.val_acc is not None else "nothing (last epoch)",
        "gpd_ratio": d["gpd_ratio"],
        "weights": choice.weights,
        "task": d.get("task", "image"),
        "preprocessor": d.get("preprocessor"),  # the tokenizer / image processor's directory (hf: students)
    }


def run_callbacks(layout: RunLayout, policy: RunPolicy) -> list[Callback]:
    """The files a run writes into ``layout``, in the order each epoch writes them."""
    callbacks: list[Callback] = [MetricsFile(layout), Checkpoint(layout)]
    if policy.tensorboard:
        callbacks.append(TensorBoard(layout))
    callbacks.append(ExportStudent(layout))
    return callbacks
