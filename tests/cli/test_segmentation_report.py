"""A segmentation run directory: the static teacher's mIoU and pixel accuracy survive ``--resume``,
and ``gpd report`` labels its figures and summary by mIoU and shows pixel accuracy too."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from gpd.cli.main import main
from gpd.io.checkpoint import load_checkpoint, save_checkpoint
from gpd.reporting.report import build_figures
from gpd.reporting.runs import read_runs
from helpers import needs_fashion_mnist

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), needs_fashion_mnist]

TINY = ["data.train_subset=48", "data.test_subset=16", "train.batch_size=16", "train.threads=1"]
MODELS = ("student", "dynamic", "static_teacher")


def table_rows(markdown: str) -> dict[str, dict[str, str]]:
    """report.md's comparison table (its first): run label -> header -> cell."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return {row[0]: dict(zip(cells[0], row)) for row in cells[2:] if len(row) == len(cells[0])}


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


def test_report_names_miou_and_shows_pixel_accuracy_of_every_model(kd_run: Path):
    assert main(["report", str(kd_run)]) == 0
    text = (kd_run / "report" / "report.md").read_text()
    row = table_rows(text)["kd"]
    last = rows_of(kd_run)[-1]
    for model, who in (
        ("student", "final student"),
        ("dynamic", "final dyn. teacher"),
        ("static_teacher", "static teacher"),
    ):
        assert row[f"{who} mIoU (%)"] == f"{float(last[f'miou_{model}']):.2f}"
        assert row[f"{who} pixel accuracy (%)"] == f"{float(last[f'pixel_acc_{model}']):.2f}"
    assert "acc (%)" not in text and "accuracy (%)" not in text.replace("pixel accuracy (%)", "")
    assert "Test mIoU and pixel accuracy in percent; gap = dynamic teacher − student mIoU" in text
    assert "### Test mIoU per epoch" in text and "### Test pixel accuracy per epoch" in text
    assert "| student mIoU (%) |" in text and "| student pixel accuracy (%) |" in text  # the per-epoch table
    assert (kd_run / "report" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_labelled_by_the_headline_metric(kd_run: Path):
    figures, _ = build_figures(read_runs([kd_run]))
    assert figures["accuracy.png"].axes[0].get_ylabel() == "test mIoU (%)"
    assert figures["gap.png"].axes[0].get_ylabel() == "dynamic teacher − student mIoU (points)"
    pixel = figures["metrics.png"].axes[0]
    assert pixel.get_ylabel() == "test pixel accuracy (%)"
    assert len(pixel.get_lines()) == 3  # student, D and the static teacher
