"""gpd.io: the one atomic write, the run layout, metrics.csv and the two file formats."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gpd.cli.main import main
from gpd.config import load_config
from gpd.io.atomic import atomic_torch_save, atomic_write, atomic_write_text, default_mode
from gpd.io.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from gpd.io.layout import ReportLayout, RunLayout, student_file_of
from gpd.io.metrics import MetricsCSV
from gpd.training import DRY_RUN, Trainer, prepare_run_dir

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomic_write_gets_the_permissions_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
        atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "atomic.pt")
        assert default_mode() == 0o666 & ~umask
    finally:
        os.umask(old)
    expected = mode_of(tmp_path / "plain.txt")
    assert expected == 0o666 & ~umask
    assert mode_of(tmp_path / "atomic.txt") == expected  # not mkstemp's 0600
    assert mode_of(tmp_path / "atomic.pt") == expected


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_text("the good one")

    def half_then_fail(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp != target and tmp.name.endswith(".pt")
        tmp.write_text("half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "the good one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    with pytest.raises(KeyboardInterrupt):  # an interrupt too
        atomic_write(target, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert target.read_text() == "the good one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    atomic_write_text(target, "the new one")
    assert target.read_text() == "the new one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_the_checkpoint_format_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 3, "model": {"w": torch.ones(2)}}, path)
    state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 3
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_metrics_rewrite_is_atomic_and_keeps_the_header(tmp_path: Path) -> None:
    metrics = MetricsCSV(tmp_path / "metrics.csv")
    metrics.write({"epoch": 1, "lr": 0.1, "gap": ""})
    metrics.write({"epoch": 2, "lr": 0.05, "gap": ""})
    metrics.rewrite([{"epoch": 1, "lr": 0.1, "gap": ""}])
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,lr,gap", "1,0.1,"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_the_layout_names_the_files_of_a_run(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path))
    assert layout.root == tmp_path
    assert [p.name for p in layout.training_files()] == [
        "config.yaml", "metrics.csv", "checkpoint.pt", "student.pt", "tensorboard",
    ]  # fmt: skip
    assert layout.exported("onnx") == tmp_path / "student.onnx"
    assert layout.report == ReportLayout(tmp_path / "report")
    assert layout.report.figure("gap.png") == tmp_path / "report" / "gap.png"
    with pytest.raises(ValueError):
        layout.report.figure("nothing.png")
    assert student_file_of(tmp_path) == tmp_path / "student.pt"
    assert student_file_of(tmp_path / "other.pt") == tmp_path / "other.pt"


def all_entries(root: Path) -> set[Path]:
    """The files and folders in ``root`` (not their contents)."""
    return set(root.iterdir())


def test_every_file_a_run_writes_is_a_layout_path(tmp_path: Path) -> None:
    cfg = load_config(
        None, ["train.device=cpu", "train.batch_size=16", "train.grad_probe_every=0", f"output_dir={tmp_path / 'run'}"]
    )
    trainer = Trainer(cfg, prepare_run_dir(cfg), replace(DRY_RUN, tensorboard=True))  # a dry run writes no TensorBoard
    trainer.fit()
    layout = RunLayout(tmp_path / "run")
    written = all_entries(layout.root)
    assert written <= set(layout.all_paths()), written - set(layout.all_paths())
    assert set(layout.training_files()) <= written

    assert main(["export", str(layout.root), "--format", "safetensors"]) == 0
    assert main(["report", str(layout.root)]) == 0
    written = all_entries(layout.root)
    assert written <= set(layout.all_paths()), written - set(layout.all_paths())
    assert layout.exported("safetensors") in written
    report = layout.report
    assert set(report.root.iterdir()) <= {report.report, *(report.root / name for name in report.FIGURES)}
    assert report.report.is_file() and report.figure("accuracy.png").is_file()
