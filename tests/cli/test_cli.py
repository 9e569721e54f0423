"""End-to-end CLI runs (bad input is tested in test_bad_input.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import gpd
from gpd.cli.main import main
from helpers import FASHION_MNIST_PRESENT, QUICK, needs_fashion_mnist  # noqa: F401  (re-exported for other tests)


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
    for column in ("epoch", "lr", "train_loss", "student_acc", "dynamic_acc", "gap", "seconds"):
        assert row[column] != "", column
    assert float(row["gap"]) == pytest.approx(float(row["dynamic_acc"]) - float(row["student_acc"]), abs=1e-3)
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
def test_baseline_run_has_no_dynamic_teacher_columns(tmp_path: Path):
    run_dir = tmp_path / "baseline"
    assert main(["train", "fashion_mnist/scratch", f"output_dir={run_dir}", *QUICK]) == 0
    row = next(iter(csv.DictReader(open(run_dir / "metrics.csv"))))
    assert row["dynamic_acc"] == "" and row["gap"] == ""
    assert "loss_ce_student" in row and "loss_sce" not in row
