"""``gpd report``: figures and report.md from hand-written run directories, and its one-line errors."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import pytest

from gpd.cli.main import main

COLUMNS = ["epoch", "lr", "train_loss"]
TAIL = ["student_acc", "dynamic_acc", "gap", "static_teacher_acc"]
EMA = ["ema_student_acc", "ema_dynamic_acc"]
END = ["img_per_s", "seconds"]

# student accuracy per epoch; each peaks before its last epoch so best != final
STUDENT = {
    "baseline": [61.5, 74.25, 80.1, 83.4, 83.95, 83.7],
    "gpd_ema": [63.0, 76.5, 82.25, 85.5, 86.75, 86.5],
    "kd_gpd": [65.25, 78.0, 83.5, 87.0, 86.8, 87.25],
}
DYNAMIC = {"gpd_ema": [63.5, 77.25, 83.0, 86.25, 87.5, 87.75], "kd_gpd": [66.0, 79.0, 84.75, 88.0, 88.5, 88.25]}
STATIC_TEACHER = 92.66
EPOCH_SECONDS = {"baseline": 20.0, "gpd_ema": 65.5, "kd_gpd": 70.25}


def write_run(root: Path, name: str, loss_terms: list[str], *, ema: bool = False, config: str = "") -> Path:
    """A run directory as gpd train writes it, numbers chosen by hand."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config)
    header = COLUMNS + [f"loss_{t}" for t in loss_terms] + TAIL + (EMA if ema else []) + END
    student, dynamic = STUDENT[name], DYNAMIC.get(name)
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for i, s in enumerate(student):
            row = {"epoch": i + 1, "lr": 0.2 * (1 - i / 6), "train_loss": 2.0 / (i + 1), "student_acc": s}
            row |= {f"loss_{t}": (k + 1) * 0.5 / (i + 1) for k, t in enumerate(loss_terms)}
            row |= {"dynamic_acc": "", "gap": "", "static_teacher_acc": ""}
            if dynamic:
                row |= {"dynamic_acc": dynamic[i], "gap": round(dynamic[i] - s, 6)}
            if name == "kd_gpd":
                row["static_teacher_acc"] = STATIC_TEACHER
            if ema:
                row |= {"ema_student_acc": s + 0.5, "ema_dynamic_acc": dynamic[i] + 0.25}
            row |= {"img_per_s": 500.0, "seconds": EPOCH_SECONDS[name]}
            writer.writerow(row)
    return run


def config(student: str, gpd: bool, kd: str = "none", teacher: str | None = None) -> str:
    return (
        f"data:\n  name: fashion_mnist\nmodel:\n  student: {student}\n"
        f"gpd:\n  enabled: {str(gpd).lower()}\n  ratio: 2.0\n"
        f"kd:\n  method: {kd}\nteacher:\n  model: {teacher or 'null'}\n  checkpoint: null\n"
        "train:\n  epochs: 6\n"
    )


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    return write_run(tmp_path, "baseline", ["ce_student"], config=config("resnet8", gpd=False))


def make_three(root: Path) -> list[Path]:
    return [
        write_run(root, "baseline", ["ce_student"], config=config("resnet8", gpd=False)),
        write_run(root, "gpd_ema", ["ce_student", "ce_dynamic", "sce"], ema=True, config=config("resnet8", gpd=True)),
        write_run(
            root,
            "kd_gpd",
            ["ce_student", "ce_dynamic", "sce", "kd_student", "kd_dynamic"],
            config=config("resnet8", gpd=True, kd="kd", teacher="resnet20"),
        ),
    ]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, int, str]:
    root = tmp_path_factory.mktemp("runs")
    runs = make_three(root)
    out = root / "comparison"
    open_figures = plt.get_fignums()
    code = main(["report", *map(str, runs), "--output", str(out)])
    assert plt.get_fignums() == open_figures  # no pyplot figure left behind
    return runs, out, code, (out / "report.md").read_text() if code == 0 else ""


def table_rows(markdown: str) -> dict[str, dict[str, str]]:
    """The comparison table (the first one in the file): run label -> header -> cell."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    rows = {}
    for line in lines[2:]:
        cells = split(line)
        if len(cells) != len(header) or cells[0] in rows:
            break  # the next table begins
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= width <= 3000 and 200 <= height <= 3000, image.shape
    assert path.stat().st_size > 10_000


def test_three_runs_write_all_figures(three_runs) -> None:
    _, out, code, _ = three_runs
    assert code == 0
    for name in ("accuracy.png", "gap.png", "losses.png", "lr.png"):
        assert_png(out / name)


def test_report_numbers_match_the_csv(three_runs) -> None:
    _, _, code, text = three_runs
    assert code == 0
    rows = table_rows(text)
    assert list(rows) == ["baseline", "gpd_ema", "kd_gpd"]
    for name, row in rows.items():
        student = STUDENT[name]
        best = max(student)
        assert row["final student acc (%)"] == f"{student[-1]:.2f}"
        assert row["best student acc (%)"] == f"{best:.2f} (epoch {student.index(best) + 1})"
        assert row["epochs"] == "6"
        if name in DYNAMIC:
            assert row["final dyn. teacher acc (%)"] == f"{DYNAMIC[name][-1]:.2f}"
            assert row["final gap"] == f"{DYNAMIC[name][-1] - student[-1]:+.2f}"
        else:
            assert row["final dyn. teacher acc (%)"] == row["final gap"] == "—"
    assert rows["baseline"]["GPD"] == "off" and rows["gpd_ema"]["GPD"] == "on, r=2"
    assert rows["kd_gpd"]["KD"] == "kd (teacher resnet20)"
    assert rows["kd_gpd"]["static teacher acc (%)"] == f"{STATIC_TEACHER:.2f}"
    assert rows["gpd_ema"]["static teacher acc (%)"] == "—"
    assert rows["gpd_ema"]["final EMA student acc (%)"] == f"{STUDENT['gpd_ema'][-1] + 0.5:.2f}"
    assert rows["baseline"]["final EMA student acc (%)"] == "—"
    assert rows["baseline"]["training time"] == "2 min 00 s"  # 6 x 20 s
    assert rows["kd_gpd"]["training time"] == "7 min 02 s"  # 6 x 70.25 s = 421.5 s


def test_report_links_existing_images_and_has_epoch_tables(three_runs) -> None:
    _, out, _, text = three_runs
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["accuracy.png", "gap.png", "losses.png", "lr.png"]
    assert all((out / link).is_file() for link in links)
    for name in STUDENT:
        assert f"## {name}" in text
    assert "| 6 | " in text  # the last epoch's row of a per-epoch table


def test_single_run_defaults_to_run_dir_report(baseline: Path, capsys) -> None:
    assert main(["report", str(baseline)]) == 0
    out = baseline / "report"
    assert_png(out / "accuracy.png")
    assert_png(out / "losses.png")
    assert not (out / "gap.png").exists()  # no dynamic teacher
    text = (out / "report.md").read_text()
    assert "gap.png" not in text and "no dynamic teacher" in text
    assert "EMA" not in text  # the run has no ema_* columns
    printed = capsys.readouterr().out
    assert str(out) in printed and "no dynamic teacher" in printed


def test_existing_report_is_kept_without_overwrite(baseline: Path, capsys) -> None:
    assert main(["report", str(baseline)]) == 0
    report = baseline / "report" / "report.md"
    before = report.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["report", str(baseline)]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "--overwrite")
    assert str(baseline / "report") in err
    assert report.stat().st_mtime_ns == before
    os.utime(report, ns=(before - 10**9, before - 10**9))
    assert main(["report", str(baseline), "--overwrite"]) == 0
    assert report.stat().st_mtime_ns != before - 10**9


def test_same_directory_names_get_distinct_labels(tmp_path: Path) -> None:
    from gpd.reporting.runs import unique_labels

    labels = unique_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"])
    assert labels == ["a/run", "b/run", "c"]
    assert unique_labels([tmp_path / "run", tmp_path / "run"]) == [f"{tmp_path.name}/run", f"{tmp_path.name}/run (2)"]


def assert_one_line_error(err: str, *words: str) -> None:
    assert err.startswith("gpd: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def _broken(tmp_path: Path, case: str) -> list[str]:
    if case == "missing directory":
        return [str(tmp_path / "nope")]
    if case == "a file":
        (tmp_path / "file.txt").write_text("x")
        return [str(tmp_path / "file.txt")]
    run = tmp_path / "run"
    run.mkdir()
    if case == "empty metrics.csv":
        (run / "metrics.csv").write_text("")
    elif case == "header only":
        (run / "metrics.csv").write_text("epoch,lr,student_acc\n")
    elif case == "not a number":
        (run / "metrics.csv").write_text("epoch,lr,student_acc\n1,0.1,abc\n")
    elif case == "bad config.yaml":
        (run / "metrics.csv").write_text("epoch,lr,student_acc\n1,0.1,50\n")
        (run / "config.yaml").write_text("a: [unclosed\n")
    elif case == "several runs without --output":
        (run / "metrics.csv").write_text("epoch,lr,student_acc\n1,0.1,50\n")
        return [str(run), str(run)]
    return [str(run)]  # "no metrics.csv": the folder is empty


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing directory", ["does not exist"]),
        ("a file", ["not a directory"]),
        ("no metrics.csv", ["metrics.csv"]),
        ("empty metrics.csv", ["empty"]),
        ("header only", ["no epochs"]),
        ("not a number", ["line 2", "'abc'"]),
        ("bad config.yaml", ["config.yaml"]),
        ("several runs without --output", ["--output"]),
    ],
)
def test_errors_are_one_line(tmp_path: Path, capsys, case: str, words: list[str]) -> None:
    assert main(["report", *_broken(tmp_path, case)]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, *words)
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("report.md"))


def test_gradient_norms_are_plotted_when_the_run_logged_them(tmp_path: Path) -> None:
    """Runs since gpd logged gradient norms get gradients.png; older runs (above) do not."""
    run = write_run(tmp_path, "gpd_ema", ["ce_student", "ce_dynamic", "sce"], config=config("resnet8", True))
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    extra = {"grad_norm": 2.0, "clipped_frac": 0.25, "grad_norm_student": 1.5, "grad_norm_dynamic": 1.0}
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(extra))
        writer.writeheader()
        writer.writerows([row | {k: v / (i + 1) for k, v in extra.items()} for i, row in enumerate(rows)])
    out = tmp_path / "report"
    assert main(["report", str(run), "--output", str(out)]) == 0
    assert_png(out / "gradients.png")
    assert "(gradients.png)" in (out / "report.md").read_text()


def test_classification_figures_say_accuracy(three_runs) -> None:
    from gpd.reporting.report import build_figures
    from gpd.reporting.runs import read_runs

    runs, _, _, text = three_runs
    figures, _ = build_figures(read_runs(runs))
    assert figures["accuracy.png"].axes[0].get_ylabel() == "test accuracy (%)"
    assert figures["gap.png"].axes[0].get_ylabel() == "dynamic teacher − student accuracy (points)"
    assert "metrics.png" not in figures and "### Test accuracy per epoch" in text


def test_a_users_task_is_reported_by_its_first_metric(tmp_path: Path) -> None:
    """A user's task (config task: FILE.py:Class): the *_acc columns hold its first metric."""
    run = write_run(tmp_path, "gpd_ema", ["bce_student", "mse"], config="task: my_task.py:MultiLabel\n")
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    at = header.index("static_teacher_acc") + 1
    extra = ["brier_student", "hamming_student", "brier_dynamic", "hamming_dynamic"]
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header[:at] + extra + header[at:])
        writer.writeheader()
        writer.writerows([row | dict.fromkeys(extra, 12.5) | {"brier_student": row["student_acc"]} for row in rows])
    out = tmp_path / "report"
    assert main(["report", str(run), "--output", str(out)]) == 0
    row = table_rows((out / "report.md").read_text())["gpd_ema"]
    assert row["final student brier (%)"] == f"{STUDENT['gpd_ema'][-1]:.2f}"
    assert row["final dyn. teacher hamming (%)"] == "12.50" and row["static teacher hamming (%)"] == "—"
    assert_png(out / "metrics.png")
