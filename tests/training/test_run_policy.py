"""The run policy: a dry run is the full run's code under caps, chosen by one object, not a flag."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpd.config import load_config
from gpd.io.layout import RunLayout
from gpd.training import DRY_RUN, FULL_RUN, RunPolicy, Trainer, loop, prepare_run_dir
from gpd.training.callbacks import Checkpoint, ExportStudent, MetricsFile, TensorBoard, run_callbacks
from gpd.training.evaluate import split_accuracy
from gpd.training.policy import as_policy

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DRY = ["train.device=cpu", "train.batch_size=16", "train.grad_probe_every=0"]


def test_the_full_run_has_no_caps() -> None:
    assert FULL_RUN == RunPolicy()
    assert FULL_RUN.epochs(200) == 200 and FULL_RUN.batch(512, 4) == 512 and FULL_RUN.workers(8) == 8
    assert not any(FULL_RUN.last_step(step) for step in range(10_000))
    assert FULL_RUN.tensorboard and not FULL_RUN.stand_ins and FULL_RUN.data_batches is None


def test_the_dry_run_caps_epochs_steps_batches_and_workers() -> None:
    assert DRY_RUN.epochs(200) == 1
    assert [DRY_RUN.last_step(step) for step in range(3)] == [False, True, True]
    assert DRY_RUN.batch(512, 2) == 16 and DRY_RUN.batch(8, 2) == 8  # at most 8 images per process
    assert DRY_RUN.workers(8) == 1 and DRY_RUN.workers(0) == 0
    assert DRY_RUN.stand_ins and not DRY_RUN.tensorboard


def test_a_bool_is_read_as_a_policy() -> None:
    assert as_policy(True) is DRY_RUN and as_policy(False) is FULL_RUN
    custom = replace(DRY_RUN, max_steps=3)
    assert as_policy(custom) is custom


def test_the_policy_decides_what_a_run_writes(tmp_path: Path) -> None:
    kinds = [type(c) for c in run_callbacks(RunLayout(tmp_path), FULL_RUN)]
    assert kinds == [MetricsFile, Checkpoint, TensorBoard, ExportStudent]
    assert TensorBoard not in [type(c) for c in run_callbacks(RunLayout(tmp_path), DRY_RUN)]


def test_the_trainer_follows_its_policy(tmp_path: Path, monkeypatch) -> None:
    cfg = load_config(None, [*DRY, "train.epochs=5", "train.eval_batch_size=8", f"output_dir={tmp_path / 'run'}"])
    policy = replace(DRY_RUN, max_steps=3, max_eval_batches=1)
    trainer = Trainer(cfg, prepare_run_dir(cfg), policy)
    assert trainer.policy is policy and trainer.loop.loaders.train.batch_size == 8  # the dry run's batch cap
    evaluated: list[int] = []

    def counted(models, batches, *args):
        batches = list(batches)
        evaluated.append(len(batches))
        return split_accuracy(models, batches, *args)

    monkeypatch.setattr(loop, "split_accuracy", counted)
    result = trainer.fit()
    assert trainer.state.num_updates == 3 and result["epoch"] == 1  # one epoch of three steps
    assert evaluated == [1]  # the test split (no validation split), one batch
    assert len(trainer.state.rows) == 1
    assert not RunLayout(trainer.run_dir).tensorboard.exists()


def test_dry_run_true_is_the_dry_run_policy(tmp_path: Path) -> None:
    cfg = load_config(None, [*DRY, f"output_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, prepare_run_dir(cfg), dry_run=True)
    assert trainer.policy is DRY_RUN
    trainer.fit()
    assert trainer.state.num_updates == DRY_RUN.max_steps
