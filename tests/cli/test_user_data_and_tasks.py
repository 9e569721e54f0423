"""Targets other than class labels through ``gpd train``: a data set of the user's own
(``data.name=FILE.py:builder``, :mod:`gpd.data.user`) with regression values or multi-hot vectors,
trained with a task of the user's own (``task=FILE.py:Class``) from the same file; and the
mismatches as one-line errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from bad_input import fails, untouched
from gpd.cli.main import main
from gpd.distill import TASKS

pytestmark = pytest.mark.usefixtures("torch_single_thread")

USER_FILE = '''
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import gpd
from gpd.data import DataBundle
from gpd.distill.tasks import Metric


def _images(samples, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(samples, 1, 8, 8, generator=g)


def _bundle(name, targets_of, outputs, train_subset=None, seed=0):
    train_x, test_x = _images(train_subset or 96, 1000 + seed), _images(32, 7)
    train = TensorDataset((train_x - 0.5) / 0.29, targets_of(train_x))
    test = TensorDataset((test_x - 0.5) / 0.29, targets_of(test_x))
    return DataBundle(train, test, outputs, 1, (1, 8, 8), (0.5,), (0.29,), name, targets="values")


def brightness(train_subset=None, seed=0):
    """Regression: each image's mean brightness of its left and of its right half (2 values)."""
    return _bundle("brightness", lambda x: torch.stack([x[..., :4].mean((1, 2, 3)), x[..., 4:].mean((1, 2, 3))], 1),
                   2, train_subset, seed)


def bright_quadrants(train_subset=None, seed=0):
    """Multi-label: is each of the 4 quadrants brighter than the whole image (a multi-hot vector)?"""
    def targets(x):
        quadrants = [x[..., :4, :4], x[..., :4, 4:], x[..., 4:, :4], x[..., 4:, 4:]]
        return torch.stack([(q.mean((1, 2, 3)) > x.mean((1, 2, 3))).float() for q in quadrants], 1)
    return _bundle("quadrants", targets, 4, train_subset, seed)


def not_a_bundle():
    return [1, 2, 3]


class R2(Metric):
    """The coefficient of determination, a fraction as every metric (gpd writes it in percent)."""
    summed = ("sse", "sum", "sum_sq", "count")

    def __init__(self):
        self.reset()

    def reset(self):
        self.sse = self.sum = self.sum_sq = 0.0
        self.count = 0

    def update(self, logits, y):
        self.sse += float(((logits - y) ** 2).sum())
        self.sum += float(y.sum())
        self.sum_sq += float((y ** 2).sum())
        self.count += y.numel()

    def compute(self):
        variance = self.sum_sq - self.sum ** 2 / self.count
        return {"r2": 1.0 - self.sse / variance}


class Regression(gpd.Task):
    name = "regression"
    loss_name = "mse"
    consistency_name = "mse_consistency"

    def supervised_loss(self, logits, y):
        return F.mse_loss(logits, y)

    def consistency(self, student_logits, dynamic_logits, eps):
        return F.mse_loss(student_logits, dynamic_logits.detach())

    def metric(self):
        return R2()


class LabelAccuracy(Metric):
    summed = ("right", "count")

    def __init__(self):
        self.reset()

    def reset(self):
        self.right, self.count = 0, 0

    def update(self, logits, y):
        self.right += int(((logits > 0).float() == y).sum())
        self.count += y.numel()

    def compute(self):
        return {"label_acc": self.right / self.count}


class MultiLabel(gpd.Task):
    name = "multilabel"
    loss_name = "bce"
    consistency_name = "bce_consistency"

    def supervised_loss(self, logits, y):
        return F.binary_cross_entropy_with_logits(logits, y)

    def consistency(self, student_logits, dynamic_logits, eps):
        return F.binary_cross_entropy_with_logits(student_logits, dynamic_logits.detach().sigmoid())

    def metric(self):
        return LabelAccuracy()
'''

TINY = ["model.student=resnet8", "train.epochs=2", "train.batch_size=16", "train.threads=1", "train.lr=0.05"]


@pytest.fixture()
def user_file(tmp_path: Path):
    path = tmp_path / "my_data.py"
    path.write_text(USER_FILE)
    yield path
    for name in ("regression", "multilabel"):  # loading the file registered its tasks: leave no trace
        if name in TASKS:
            TASKS.unregister(name)


def rows_of(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_regression_values_train_through_gpd_train_and_eval(user_file: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "regression"
    args = ["train", f"data.name={user_file}:brightness", f"task={user_file}:Regression", "data.val_split=16"]
    assert main([*args, *TINY, f"output_dir={run}"]) == 0
    rows = rows_of(run)
    assert len(rows) == 2 and rows[0]["train_acc"] == ""  # no top-1 for regression
    for row in rows:
        assert float(row["loss_mse_student"]) > 0 and math.isfinite(float(row["loss_mse_consistency"]))
        assert row["student_acc"] == row["r2_student"] and math.isfinite(float(row["r2_dynamic"]))
        assert float(row["r2_student"]) <= 100 and row["val_r2_student"] != ""
    assert float(rows[-1]["loss_mse_student"]) < float(rows[0]["loss_mse_student"])
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "r2" in capsys.readouterr().out


def test_multi_hot_vectors_train_through_gpd_train(user_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "multilabel"
    args = ["train", f"data.name={user_file}:bright_quadrants", f"task={user_file}:MultiLabel", "data.train_subset=64"]
    assert main([*args, *TINY, f"output_dir={run}"]) == 0
    rows = rows_of(run)
    assert [float(r["loss_bce_student"]) > 0 for r in rows] == [True, True]
    assert 0 <= float(rows[-1]["label_acc_student"]) <= 100 and rows[-1]["label_acc_dynamic"] != ""


@pytest.mark.parametrize(
    "args, words",
    [
        (["data.name={f}:brightness"], "not class labels: set task= to a task of your own"),
        (["data.name={f}:brightness", "task=segmentation", "model.student=seg_resnet8"], "needs masks"),
        (["data.name={f}:not_a_bundle", "task={f}:Regression"], "returned a list; return a gpd.data.DataBundle"),
        (["data.name={f}:nothing_here", "task={f}:Regression"], "has no attribute 'nothing_here'"),
        (["data.name={d}/missing.py:build"], "does not exist"),
    ],
)
def test_user_data_mismatches_are_one_line_errors(
    args: list[str], words: str, user_file: Path, tmp_path: Path, capsys
) -> None:
    argv = [a.format(f=user_file, d=tmp_path) for a in args]
    with untouched(tmp_path):
        err = fails(["train", *argv, *TINY, f"output_dir={tmp_path / 'run'}"], capsys)
    assert words in err
