"""End-to-end CLI runs and the one-line errors of bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpd
from gpd.cli.main import main
from gpd.data import locate

FASHION_MNIST_PRESENT = (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_PRESENT, reason="Fashion-MNIST is not installed (make test installs it)"
)

QUICK = ["data.train_subset=2048", "train.epochs=1", "train.batch_size=32", "train.eval_batch_size=1000"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpd: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    assert main(["train", f"output_dir={run_dir}", *QUICK]) == 0
    return run_dir


@needs_fashion_mnist
def test_train_writes_a_complete_run_directory(trained_run: Path):
    assert {p.name for p in trained_run.iterdir()} >= {"config.yaml", "metrics.csv", "checkpoint.pt", "student.pt"}
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    assert len(rows) == 1
    row = rows[0]
    for column in ("epoch", "lr", "train_loss", "student_acc", "teacher_acc", "gap", "seconds"):
        assert row[column] != "", column
    assert float(row["gap"]) == pytest.approx(float(row["teacher_acc"]) - float(row["student_acc"]), abs=1e-3)
    assert float(row["student_acc"]) > 30.0  # chance is 10%
    config = (trained_run / "config.yaml").read_text()
    assert "train_subset: 2048" in config and "resnet8" in config


@needs_fashion_mnist
def test_exported_student_loads_without_config_and_matches_metrics(trained_run: Path, capsys):
    student = gpd.load_student(trained_run / "student.pt")
    assert type(student).__name__ == "CifarResNet"
    assert not student.training
    out = student(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)

    capsys.readouterr()
    assert main(["eval", str(trained_run / "student.pt")]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy ")[1].split("%")[0])
    logged = float(list(csv.DictReader(open(trained_run / "metrics.csv")))[-1]["student_acc"])
    assert accuracy == pytest.approx(logged, abs=0.01)


@needs_fashion_mnist
def test_existing_run_is_not_overwritten(trained_run: Path, capsys):
    before = (trained_run / "student.pt").stat().st_mtime_ns
    assert main(["train", f"output_dir={trained_run}", *QUICK]) == 2
    assert "already holds a run" in one_line_error(capsys)
    assert (trained_run / "student.pt").stat().st_mtime_ns == before


@needs_fashion_mnist
def test_baseline_run_has_no_teacher_columns(tmp_path: Path):
    run_dir = tmp_path / "baseline"
    assert main(["train", "fashion_mnist/scratch", f"output_dir={run_dir}", *QUICK]) == 0
    row = list(csv.DictReader(open(run_dir / "metrics.csv")))[0]
    assert row["teacher_acc"] == "" and row["gap"] == ""
    assert "loss_ce_student" in row and "loss_sce" not in row


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "train.epoch=3"], "unknown config key 'train.epoch'"),
        (["train", "train.epochs=many"], "bad value for 'train.epochs'"),
        (["train", "gpd.ratio=0.5"], "gpd.ratio must be >= 1"),
        (["train", "no_such_config"], "unknown config 'no_such_config'"),
        (["train", "nokey"], "unknown config 'nokey'"),
        (["train", "fashion_mnist/scratch_gpd", "nokey"], "is not of the form key=value"),
        (["train", "model.student=resnet9000", "output_dir={tmp}/a"], "resnet9000"),
        (["train", "data.name=svhn", "output_dir={tmp}/b"], "svhn"),
        (["train", "data.root={tmp}/nothing_here", "output_dir={tmp}/c"], "nothing_here"),
        (["eval", "{tmp}/missing.pt"], "no exported student"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    assert message in one_line_error(capsys)


def test_garbage_student_file(tmp_path, capsys):
    path = tmp_path / "student.pt"
    path.write_bytes(b"not a checkpoint")
    assert main(["eval", str(path)]) == 2
    assert "cannot read" in one_line_error(capsys)


def test_console_script_usage_errors_exit_2():
    result = subprocess.run([sys.executable, "-m", "gpd", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice" in result.stderr
