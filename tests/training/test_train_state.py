"""The training state made explicit: the loop runs from its settings and collaborators (no config),
advances a TrainState that the callbacks read, in an order they declare; the checkpoint is
written and read back by one pair in gpd.io."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import gpd.config.schema
from gpd.distill import Distiller
from gpd.errors import CheckpointError
from gpd.io.checkpoint import TrainingObjects, load_checkpoint, load_training_state, save_training_state
from gpd.io.layout import RunLayout
from gpd.models import create_model
from gpd.training import DRY_RUN, FULL_RUN
from gpd.training.builders import Loaders
from gpd.training.callbacks import (
    Callback,
    Callbacks,
    Checkpoint,
    ExportStudent,
    MetricsFile,
    TensorBoard,
    check_callback_order,
    run_callbacks,
)
from gpd.training.distributed import DistContext
from gpd.training.grad_stats import GradStats
from gpd.training.loop import LoopSettings, TrainLoop
from gpd.training.nonfinite import NonFiniteGuard
from gpd.training.precision import Precision
from gpd.training.rng import capture_rng
from gpd.training.selection import WeightSelection
from gpd.training.state import RunView, TrainState

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CPU = torch.device("cpu")
SRC = Path(__file__).resolve().parents[2] / "src" / "gpd"


class Recorder(Callback):
    """Records the hooks it sees, with what the state said at each."""

    kind = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def on_fit_start(self, state: TrainState, run: RunView) -> None:
        self.seen.append(("fit_start", state.epoch, state.num_updates))

    def on_epoch_end(self, state: TrainState, run: RunView, row: dict[str, Any]) -> None:
        assert row is state.rows[-1] and row["epoch"] == state.epoch
        self.seen.append(("epoch_end", state.epoch, state.num_updates))

    def close(self, state: TrainState, run: RunView) -> None:
        self.seen.append(("close", state.epoch, state.num_updates))

    def on_fit_end(self, state: TrainState, run: RunView) -> None:
        self.seen.append(("fit_end", state.epoch, state.num_updates))


def tiny_run(callbacks: list[Callback] | None = None, seed: int = 0) -> tuple[TrainLoop, RunView]:
    """A loop over a resnet8 GPD pair on 64 random 16x16 images, built from its parts alone
    (``seed``: of the initial weights)."""
    torch.manual_seed(seed)
    distiller = Distiller(create_model("resnet8", num_classes=4, in_chans=1), ratio=2.0, input_size=(1, 16, 16))
    network = distiller.network
    gen = torch.Generator().manual_seed(0)  # the same data for every seed of the weights
    data = TensorDataset(torch.randn(64, 1, 16, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen))
    sampler: DistributedSampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    loaders = Loaders(DataLoader(data, batch_size=16, sampler=sampler, drop_last=True), sampler,
                      DataLoader(data, batch_size=32), None)  # fmt: skip
    optimizer = torch.optim.SGD(distiller.param_groups(5e-4), lr=0.05, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=2, updates_per_epoch=4)
    precision, selection = Precision("fp32", CPU), WeightSelection(has_val=False, has_ema=False)
    state = TrainState()
    run = RunView(
        ctx=DistContext(), config=lambda: {"note": "no Config object"}, description={}, distiller=distiller,
        network=network, optimizer=optimizer, scheduler=scheduler, precision=precision, ema=None, selection=selection,
    )  # fmt: skip
    settings = LoopSettings(epochs=2, batch_size=16, memory_mode="sequential", grad_clip=2.0, grad_probe_every=2)
    loop = TrainLoop(
        settings, state, distiller=distiller, train_module=distiller, network=network, loaders=loaders,
        optimizer=optimizer, scheduler=scheduler, precision=precision, selection=selection,
        guard=NonFiniteGuard("stop", 4, DistContext(), CPU), grad_stats=GradStats(CPU, clipping=True),
        callbacks=Callbacks(callbacks or [], run),
    )  # fmt: skip
    return loop, run


def test_the_loop_runs_from_its_settings_without_a_config(monkeypatch) -> None:
    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the loop built a Config")

    monkeypatch.setattr(gpd.config.schema.Config, "__init__", refused)
    recorder = Recorder()
    loop, _ = tiny_run([recorder])
    row = loop.run_epochs(2)
    state = loop.state
    assert (state.epoch, state.num_updates, len(state.rows)) == (2, 8, 2) and row is state.rows[-1]
    assert {"train_loss", "student_acc", "dynamic_acc", "grad_norm", "clipped_frac", "grad_norm_dynamic"} <= set(row)
    assert recorder.seen == [("fit_start", 0, 0), ("epoch_end", 1, 4), ("epoch_end", 2, 8), ("close", 2, 8),
                             ("fit_end", 2, 8)]  # fmt: skip
    assert loop.selection.choice is not None and loop.selection.choice.epoch == 2


def test_the_loop_and_the_callbacks_do_not_read_the_config() -> None:
    for module in ("loop.py", "callbacks.py", "state.py"):
        tree = ast.parse((SRC / "training" / module).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.startswith("gpd.config")}, module
        assert "cfg" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}, module


# ------------------------------------------------------------------------ callback order


class Upload(Callback):
    """A user's callback that needs student.pt written."""

    kind = "upload"
    after = ("student",)


def test_the_default_callbacks_are_in_their_declared_order(tmp_path: Path) -> None:
    callbacks = run_callbacks(RunLayout(tmp_path), FULL_RUN)
    assert [type(c) for c in callbacks] == [MetricsFile, Checkpoint, TensorBoard, ExportStudent]
    check_callback_order(callbacks)
    check_callback_order(run_callbacks(RunLayout(tmp_path), DRY_RUN))
    assert Checkpoint.after == ("metrics",)  # the checkpoint holds the rows metrics.csv has written
    assert set(ExportStudent.after) == {MetricsFile.kind, Checkpoint.kind, TensorBoard.kind}  # student.pt last


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ((Checkpoint, MetricsFile), "Checkpoint must run after the metrics callback"),
        ((MetricsFile, ExportStudent, Checkpoint), "ExportStudent must run after the checkpoint callback"),
        ((ExportStudent, TensorBoard), "ExportStudent must run after the tensorboard callback"),
    ],
)
def test_a_wrong_callback_order_is_refused(tmp_path: Path, order: tuple[type[Callback], ...], message: str) -> None:
    layout = RunLayout(tmp_path)
    callbacks = [kind(layout) for kind in order]  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=message):
        check_callback_order(callbacks)
    _, run = tiny_run()
    with pytest.raises(ValueError, match=message):
        Callbacks(callbacks, run)


def test_a_users_callback_declares_its_place(tmp_path: Path) -> None:
    defaults = run_callbacks(RunLayout(tmp_path), FULL_RUN)
    check_callback_order([*defaults, Upload(), Recorder()])
    check_callback_order([Upload(), Recorder()])  # what it names is not in the list: nothing to keep
    with pytest.raises(ValueError, match="Upload must run after the student callback"):
        check_callback_order([*defaults[:-1], Upload(), defaults[-1]])


# ------------------------------------------------------------------------ the checkpoint pair


def test_the_checkpoint_pair_restores_the_state_and_the_objects(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    loop, run = tiny_run(seed=0)
    loop.run_epochs(1)
    loop.state.static_teacher_fingerprint = "f" * 64
    rng = [capture_rng()]
    save_training_state(path, loop.state, run.checkpointed(), config=run.config(), rng=rng)
    saved = load_checkpoint(path)
    assert saved["epoch"] == 1 and saved["num_updates"] == 4 and saved["config"] == {"note": "no Config object"}

    fresh, fresh_run = tiny_run(seed=1)
    fresh.state.static_teacher_fingerprint = "f" * 64
    load_training_state(path, fresh.state, fresh_run.checkpointed())
    state = fresh.state
    assert (state.epoch, state.next_epoch, state.num_updates) == (1, 2, 4)
    assert state.rows == loop.state.rows and state.rng is not None and torch.equal(state.rng["torch"], rng[0]["torch"])
    for key, value in run.distiller.state_dict().items():
        assert torch.equal(fresh_run.distiller.state_dict()[key], value), key
    assert fresh_run.optimizer.state_dict()["state"].keys() == run.optimizer.state_dict()["state"].keys()
    assert fresh_run.scheduler.state_dict() == run.scheduler.state_dict()
    assert fresh_run.selection.state_dict() == run.selection.state_dict()

    # the two continue alike: the same second epoch, from the same random state
    loop.state.rng = rng[0]
    expected = loop.run_epochs(2)
    resumed = fresh.run_epochs(2)
    assert {k: v for k, v in resumed.items() if "seconds" not in k and k != "img_per_s"} == {
        k: v for k, v in expected.items() if "seconds" not in k and k != "img_per_s"
    }


def test_the_checkpoint_pair_refuses_other_teachers_and_says_when_rng_is_fresh(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    loop, run = tiny_run()
    loop.state.static_teacher_fingerprint = "a" * 64
    save_training_state(path, loop.state, run.checkpointed(), config={}, rng=[{}, {}])
    other, other_run = tiny_run()
    other.state.static_teacher_fingerprint = "b" * 64
    with pytest.raises(CheckpointError, match="other static teacher weights"):
        load_training_state(path, other.state, other_run.checkpointed())
    said: list[str] = []
    other.state.static_teacher_fingerprint = "a" * 64
    load_training_state(path, other.state, other_run.checkpointed(), log=said.append)
    assert other.state.rng is None and "written by 2 processes, this run has 1" in said[0]


def test_an_older_checkpoint_without_rows_keeps_the_metrics_files_rows(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    loop, run = tiny_run()
    loop.run_epochs(1)
    save_training_state(path, loop.state, run.checkpointed(), config={}, rng=[{}])
    old = load_checkpoint(path)
    del old["metrics"]
    torch.save(old, path)
    layout = RunLayout(tmp_path)
    metrics = MetricsFile(layout)
    for row in ({**loop.state.rows[0], "epoch": 1}, {**loop.state.rows[0], "epoch": 2}):
        metrics.metrics.write(row)  # the file ran one epoch ahead of the checkpoint

    fresh, fresh_run = tiny_run()
    load_training_state(path, fresh.state, fresh_run.checkpointed())
    assert fresh.state.rows == [] and fresh.state.epoch == 1
    Callbacks([metrics], fresh_run).on_resume(fresh.state)
    assert layout.metrics.read_text().count("\n") == 2  # the header and epoch 1


def test_the_ema_of_a_run_needs_the_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    loop, run = tiny_run()
    save_training_state(path, loop.state, run.checkpointed(), config={}, rng=[{}])
    _, other_run = tiny_run()
    objects = other_run.checkpointed()
    with_ema = TrainingObjects(**{**objects.__dict__, "ema": other_run.network})
    with pytest.raises(CheckpointError, match="has no EMA weights but train.ema=true"):
        load_training_state(path, TrainState(), with_ema)
