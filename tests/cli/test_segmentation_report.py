"""A segmentation run directory: the static teacher's mIoU and pixel accuracy survive ``--resume``,
and ``gpd report`` labels its figures and summary by mIoU and shows pixel accuracy too."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from gpd.cli.main import main
from gpd.io.checkpoint import load_checkpoint, save_checkpoint
from helpers import needs_fashion_mnist

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), needs_fashion_mnist]

TINY = ["data.train_subset=48", "data.test_subset=16", "train.batch_size=16", "train.threads=1"]
MODELS = ("student", "dynamic", "static_teacher")


def rows_of(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "metrics.csv")))


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory) -> Path:
    """kd_gpd (CWD) from a demo run's student as its teacher: 1 epoch, then resumed for a second."""
    root = tmp_path_factory.mktemp("segreport")
    teacher = root / "teacher"
    assert main(["train", "fashion_mnist_seg/demo", f"output_dir={teacher}", "train.epochs=1", *TINY]) == 0
    run = root / "kd"
    args = ["fashion_mnist_seg/kd_gpd", "teacher.model=seg_resnet8", f"teacher.checkpoint={teacher}"]
    assert main(["train", *args, *TINY, "train.epochs=1", f"output_dir={run}"]) == 0
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 0
    return run


def test_static_teacher_metrics_survive_a_resume(kd_run: Path):
    first, resumed = rows_of(kd_run)
    for column in ("miou_static_teacher", "pixel_acc_static_teacher", "static_teacher_acc"):
        assert resumed[column] == first[column] != "", column
    assert first["miou_static_teacher"] == first["static_teacher_acc"]


def test_a_checkpoint_without_static_teacher_metrics_measures_them_again(kd_run: Path, tmp_path: Path):
    """A checkpoint of an older gpd kept the static teacher's headline number only: the resumed run
    evaluates the (frozen) teacher once more, so its rows keep every metric."""
    old = tmp_path / "old"
    shutil.copytree(kd_run, old, ignore=shutil.ignore_patterns("report"))
    state = load_checkpoint(old / "checkpoint.pt")
    state.pop("format"), state.pop("static_teacher_metrics")
    save_checkpoint(state, old / "checkpoint.pt")
    assert main(["train", "--resume", str(old), "train.epochs=3"]) == 0
    rows = rows_of(old)
    assert len(rows) == 3
    for column in ("miou_static_teacher", "pixel_acc_static_teacher", "static_teacher_acc"):
        assert rows[2][column] == rows[0][column] != "", column
