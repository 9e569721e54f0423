"""Segmentation through ``gpd train`` / ``gpd eval`` (task=segmentation, fashion_mnist_seg), a user's task
from a file through ``gpd train task=FILE.py:Class``, and the task/model/data mismatches as bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from bad_input import fails, untouched
from gpd.cli.main import main
from gpd.distill import TASKS
from gpd.models import create_model
from helpers import needs_fashion_mnist

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), needs_fashion_mnist]

TINY = ["data.train_subset=48", "data.test_subset=16", "train.epochs=1", "train.batch_size=16", "train.threads=1"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("seg") / "demo"
    assert main(["train", "fashion_mnist_seg/demo", f"output_dir={run}", "data.val_split=16", *TINY]) == 0
    return run


def test_demo_writes_miou_columns_for_student_and_dynamic_teacher(demo_run: Path):
    rows = list(csv.DictReader(open(demo_run / "metrics.csv")))
    assert len(rows) == 1
    row = rows[0]
    for column in ("miou_student", "pixel_acc_student", "miou_dynamic", "pixel_acc_dynamic", "val_miou_student"):
        assert 0.0 <= float(row[column]) <= 100.0, column
    assert row["student_acc"] == row["miou_student"]  # the headline column: mIoU, which selection uses
    assert row["train_acc"] == ""  # top-1 of a classifier only


def test_eval_reports_miou(demo_run: Path, capsys):
    assert main(["eval", str(demo_run)]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "pixel_acc" in out and "16 fashion_mnist_seg images" in out


def test_export_loads_strictly_into_the_model_class(demo_run: Path):
    payload = torch.load(demo_run / "student.pt", weights_only=False)
    model = create_model("seg_resnet8", num_classes=11, in_chans=1)
    model.load_state_dict(payload["state_dict"], strict=True)
    assert model.eval()(torch.zeros(1, 1, 64, 64)).shape == (1, 11, 64, 64)


def test_kd_gpd_with_cwd_from_a_trained_teacher(demo_run: Path, tmp_path: Path):
    """kd_gpd's CWD section from a teacher run (the demo's student stands in for seg_resnet20)."""
    args = ["train", "fashion_mnist_seg/kd_gpd", "teacher.model=seg_resnet8", f"teacher.checkpoint={demo_run}"]
    assert main([*args, *TINY, f"output_dir={tmp_path / 'kd'}"]) == 0
    row = next(csv.DictReader(open(tmp_path / "kd" / "metrics.csv")))
    assert float(row["loss_kd_student"]) > 0 and float(row["loss_kd_dynamic"]) > 0
    assert row["miou_static_teacher"] == row["static_teacher_acc"] != ""


USER_TASK = '''
import torch
import torch.nn.functional as F
import gpd
from gpd.distill.tasks import Metric


class OneHotMSE(Metric):
    def __init__(self):
        self.reset()

    def reset(self):
        self.sum, self.count = 0.0, 0

    def update(self, logits, y):
        target = F.one_hot(y, logits.shape[1]).float()
        self.sum += float(((logits.softmax(1) - target) ** 2).mean(1).sum())
        self.count += len(y)

    def compute(self):
        return {"brier": self.sum / max(self.count, 1)}


class MultiLabel(gpd.Task):
    """Each class a yes/no question (BCE), the label the one yes; consistency: MSE of the probabilities."""

    name = "multilabel"
    loss_name = "bce"
    consistency_name = "mse"

    def __init__(self, pos_weight: float = 1.0):
        self.pos_weight = pos_weight

    def supervised_loss(self, logits, y):
        target = F.one_hot(y, logits.shape[1]).float()
        weight = torch.full((logits.shape[1],), self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)

    def consistency(self, student_logits, dynamic_logits, eps):
        return F.mse_loss(student_logits.sigmoid(), dynamic_logits.sigmoid())

    def metric(self):
        return OneHotMSE()
'''


def test_a_users_task_from_a_file_trains_through_gpd_train(tmp_path: Path):
    """The user's multi-label task on class labels, each read as a multi-hot vector with one class on
    (multi-hot and regression data sets of the user's own: tests/cli/test_user_data_and_tasks.py)."""
    (tmp_path / "my_task.py").write_text(USER_TASK)
    run = tmp_path / "user"
    args = ["train", f"task={tmp_path / 'my_task.py'}:MultiLabel", "task_options.pos_weight=2.0", *TINY]
    try:
        assert main([*args, f"output_dir={run}"]) == 0
    finally:
        if "multilabel" in TASKS:  # loading the file registered the task for this process: leave no trace
            TASKS.unregister("multilabel")
    row = next(csv.DictReader(open(run / "metrics.csv")))
    assert float(row["loss_bce_student"]) > 0 and float(row["loss_mse"]) >= 0
    assert 0 <= float(row["brier_student"]) <= 100 and row["student_acc"] == row["brier_student"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["task=segmentation", "data.name=fashion_mnist_seg", "model.student=resnet8"], "a classifier's"),
        (["data.name=fashion_mnist", "model.student=seg_resnet8"], "use task='segmentation'"),
        (["task=segmentation", "data.name=fashion_mnist", "model.student=seg_resnet8"], "needs masks"),
        (["data.name=fashion_mnist_seg", "model.student=seg_resnet8"], "set task=segmentation"),
        (["kd.method=cwd", "teacher.model=resnet20"], "needs task='segmentation'"),
        (["task=segmentation", "task_options.bogus=1"], "unknown segmentation task options"),
        (["task=nosuchtask"], "task must be"),
    ],
)
def test_task_mismatches_are_one_line_errors(args: list[str], words: str, tmp_path: Path, capsys):
    run = tmp_path / "run"
    with untouched(tmp_path):
        err = fails(["train", *args, *TINY, f"output_dir={run}"], capsys)
    assert words in err
