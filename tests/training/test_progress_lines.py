"""Progress in a log: where no terminal shows tqdm's bar, a plain line every train.log_interval_s seconds."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pytest

from gpd.config import load_config
from gpd.errors import ConfigError
from gpd.training import Trainer, prepare_run_dir, resume_config
from gpd.training.progress import ProgressLines, duration, is_terminal, wants_progress_lines
from helpers import GPD, needs_fashion_mnist

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_interval_with_epoch_step_loss_rate_and_time_left() -> None:
    clock, written, reads = Clock(), [], []

    def loss() -> float:
        reads.append(1)
        return 0.61234

    lines = ProgressLines(2, 5, steps=100, interval_s=30.0, write=written.append, clock=clock)
    for _ in range(9):  # 9 steps of 3 s, 64 images each: no line before 30 s
        clock.now += 3.0
        lines.step(64, loss)
    assert written == [] and reads == []  # the loss (a device read) is read only when a line is due
    clock.now += 3.0
    lines.step(64, loss)  # step 10, 30 s in
    assert written == ["epoch 2/5  step 10/100  loss 0.6123  21 img/s  4:30 left"]
    clock.now += 29.0
    lines.step(64, loss)
    assert len(written) == 1  # 29 s since the last line
    clock.now += 1.0
    lines.step(64, loss)
    assert len(written) == 2 and written[1].startswith("epoch 2/5  step 12/100  ") and len(reads) == 2


def test_durations_read_as_minutes_or_hours() -> None:
    assert (duration(0.4), duration(75), duration(3600 + 62), duration(-3)) == ("0:00", "1:15", "1:01:02", "0:00")


def test_lines_are_wanted_where_the_log_or_the_bar_is_not_on_a_terminal() -> None:
    terminal, log = FakeTerminal(), io.StringIO()
    assert not wants_progress_lines(terminal, terminal)  # an interactive run: tqdm's bar, as before
    assert wants_progress_lines(log, log)  # > log 2>&1, a pipe, a scheduler
    assert wants_progress_lines(log, terminal)  # > log: the bar on the terminal, the lines in the log
    assert wants_progress_lines(terminal, log)  # 2> err: tqdm draws no bar, so the lines take its place
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed) and not is_terminal(None)


def run_with_lines(tmp_path: Path, capsys, progress_lines: bool, interval: float) -> list[str]:
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"train.log_interval_s={interval}", "train.epochs=1"])
    trainer = Trainer(cfg, prepare_run_dir(cfg), dry_run=True)
    trainer.loop.progress_lines = progress_lines  # as wants_progress_lines would decide for the run's streams
    capsys.readouterr()
    trainer.fit()
    return capsys.readouterr().out.splitlines()


def test_the_loop_writes_lines_before_the_epoch_ends_only_where_wanted(tmp_path: Path, capsys) -> None:
    out = run_with_lines(tmp_path / "log", capsys, progress_lines=True, interval=1e-9)
    steps = [n for n, line in enumerate(out) if "  step " in line]
    summary = next(n for n, line in enumerate(out) if line.startswith("epoch 1/1  lr "))
    assert [out[n].split("  loss")[0] for n in steps] == ["epoch 1/1  step 1/2", "epoch 1/1  step 2/2"]  # dry run: 2
    assert steps[-1] < summary and out[steps[0]].endswith(" left")
    assert not any("  step " in line for line in run_with_lines(tmp_path / "off", capsys, True, interval=0.0))
    assert not any("  step " in line for line in run_with_lines(tmp_path / "bar", capsys, False, interval=1e-9))


def test_a_negative_interval_is_refused_and_a_resume_may_change_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.log_interval_s must be >= 0"):
        load_config(None, ["train.log_interval_s=-1"])
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}"])
    run_dir = prepare_run_dir(cfg)
    (run_dir / "checkpoint.pt").touch()  # resume_config only reads config.yaml
    assert resume_config(run_dir, ["train.log_interval_s=5"]).train.log_interval_s == 5.0  # the log only


@needs_fashion_mnist
def test_gpd_train_logged_to_a_file_writes_progress_lines_before_epoch_1_ends(tmp_path: Path) -> None:
    """The issue's case, ``gpd train train.epochs=1 > log 2>&1``, with a smaller interval and a tiny run."""
    log = tmp_path / "log"
    args = [
        "data.train_subset=1024", "data.test_subset=256", "train.batch_size=32", "train.epochs=1",
        "train.device=cpu", "train.log_interval_s=0.5", f"output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"OMP_NUM_THREADS": "1"}  # a user's shell
    with open(log, "w") as out:
        proc = subprocess.Popen([GPD, "train", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while " left\n" not in (seen := log.read_text()) and proc.poll() is None:
                time.sleep(0.05)
            assert proc.wait(timeout=600) == 0
        finally:
            proc.kill()
    assert "epoch 1/1  step " in seen and "epoch 1/1  lr " not in seen, seen  # in the file while epoch 1 ran
    lines = log.read_text().splitlines()
    progress = [n for n, line in enumerate(lines) if line.startswith("epoch 1/1  step ")]
    summary = next(n for n, line in enumerate(lines) if line.startswith("epoch 1/1  lr "))
    assert progress[-1] < summary and all(" img/s " in lines[n] and lines[n].endswith(" left") for n in progress)
    assert "it/s" not in log.read_text() and "img/s]" not in log.read_text()  # no tqdm bar in the file
