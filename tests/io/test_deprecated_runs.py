"""The old names in run directories (gpd.deprecated), continued from test_deprecated_names.py:
metrics.csv columns of D named ``teacher``, read by ``gpd report`` and rewritten by ``--resume``."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from gpd.cli.main import main
from gpd.config import load_config
from gpd.deprecated import METRIC_COLUMNS, upgrade_columns, upgrade_rows
from gpd.io.checkpoint import load_checkpoint
from gpd.reporting.runs import read_run
from gpd.training import Trainer, prepare_run_dir

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def old_keys(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` as an older gpd saved it: D under ``{prefix}teacher.`` instead of ``{prefix}dynamic.``."""
    new = f"{prefix}dynamic."
    return {(f"{prefix}teacher." + k[len(new) :] if k.startswith(new) else k): v for k, v in state.items()}


def messages(record: list[warnings.WarningMessage], category: type[Warning]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, category)]


# ------------------------------------------------------------------------ metrics columns and gpd report


def test_old_metric_columns_are_renamed_and_the_static_teachers_kept():
    assert "static_teacher_acc" not in METRIC_COLUMNS
    header = ["epoch", "loss_ce_teacher", "loss_kd_teacher", "teacher_acc", "gap", "static_teacher_acc",
              "ema_teacher_acc", "val_teacher_acc", "val_ema_teacher_acc", "grad_norm_teacher"]  # fmt: skip
    with pytest.warns(FutureWarning, match="dynamic_acc"):
        assert upgrade_columns(header, "metrics.csv") == [
            "epoch", "loss_ce_dynamic", "loss_kd_dynamic", "dynamic_acc", "gap", "static_teacher_acc",
            "ema_dynamic_acc", "val_dynamic_acc", "val_ema_dynamic_acc", "grad_norm_dynamic",
        ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = [{"epoch": 1, "dynamic_acc": 50.0}]
        assert upgrade_rows(rows, "x") is rows


def rename_csv_columns(path: Path, mapping: dict[str, str]) -> None:
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    lines[0] = [mapping.get(name, name) for name in lines[0]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(lines)


OLD_COLUMNS = {new: old for old, new in METRIC_COLUMNS.items()}


def test_report_reads_an_old_metrics_csv_as_the_new_one(tmp_path: Path):
    header = ["epoch", "lr", "train_loss", "loss_ce_student", "loss_ce_dynamic", "loss_sce", "student_acc",
              "dynamic_acc", "gap", "static_teacher_acc", "ema_student_acc", "ema_dynamic_acc", "grad_norm",
              "grad_norm_student", "grad_norm_dynamic", "img_per_s", "seconds"]  # fmt: skip
    runs = []
    for which in ("new", "old"):
        run = tmp_path / which / "run"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(
            "model:\n  student: resnet8\ngpd:\n  enabled: true\n  ratio: 2.0\n  kd_weight: 3.0\n"
        )
        with open(run / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for epoch in (1, 2, 3):
                writer.writerow([epoch, 0.1, 2.0 / epoch, 1.0, 0.9, 0.2, 60 + epoch, 61.5 + epoch, 1.5, "",
                                 60.5 + epoch, 62 + epoch, 2.0, 1.5, 1.0, 500, 10.0])  # fmt: skip
        if which == "old":
            rename_csv_columns(run / "metrics.csv", OLD_COLUMNS)
        runs.append(run)
    assert "teacher_acc" in (runs[1] / "metrics.csv").read_text().splitlines()[0].split(",")
    with pytest.warns(FutureWarning, match=r"old column names .*teacher_acc.*read as .*dynamic_acc"):
        old = read_run(runs[1])
    assert old.rows == read_run(runs[0]).rows
    with pytest.warns(FutureWarning):
        assert main(["report", str(runs[1])]) == 0
    assert main(["report", str(runs[0])]) == 0
    names = sorted(p.name for p in (runs[1] / "report").iterdir())
    assert names == sorted(p.name for p in (runs[0] / "report").iterdir()) and "gap.png" in names
    old_text = (runs[1] / "report" / "report.md").read_text().replace(str(runs[1]), str(runs[0]))
    assert old_text == (runs[0] / "report" / "report.md").read_text()


# ------------------------------------------------------------------------ --resume of an old run directory

TINY_RUN = [
    "data.name=digits", "data.train_subset=128", "data.test_subset=64", "train.batch_size=32",
    "train.eval_batch_size=64", "train.device=cpu", "train.deterministic=true", "train.ema=true",
    "train.ema_decay=0.9", "train.grad_probe_every=2", "train.threads=1",
]  # fmt: skip


def make_old_style(run: Path, *, rows_in_checkpoint: bool) -> None:
    """Turn a run directory of this gpd into one an older gpd wrote: D's keys, the metrics columns
    (in the file and, unless ``rows_in_checkpoint`` is False, in the checkpoint) and gpd.kd_weight."""
    state = load_checkpoint(run / "checkpoint.pt")
    as_gpd = {("gpd." + k[len("network.") :] if k.startswith("network.") else k): v for k, v in state["model"].items()}
    state["model"] = old_keys(as_gpd, "gpd.")
    state["ema"] = old_keys(state["ema"], "module.")
    if rows_in_checkpoint:
        state["metrics"] = [{OLD_COLUMNS.get(k, k): v for k, v in row.items()} for row in state["metrics"]]
    else:
        del state["metrics"]  # a checkpoint older still: the rows come from metrics.csv alone
    torch.save(state, run / "checkpoint.pt")
    rename_csv_columns(run / "metrics.csv", OLD_COLUMNS)
    config = (run / "config.yaml").read_text()
    assert "  sce_weight: 3.0\n" in config
    (run / "config.yaml").write_text(config.replace("  sce_weight: 3.0\n", "  kd_weight: 3.0\n"))


def metrics_without_timing(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in ("img_per_s", "seconds")} for row in csv.DictReader(f)]


def test_resume_of_an_old_run_directory_continues_as_a_new_one(tmp_path: Path):
    first = tmp_path / "first"
    cfg = load_config(None, [*TINY_RUN, "train.epochs=1", f"output_dir={first}"])
    Trainer(cfg, prepare_run_dir(cfg)).fit()
    header = (first / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss_ce_dynamic", "dynamic_acc", "ema_dynamic_acc", "grad_norm_dynamic"} <= set(header)

    runs = {}
    for name in ("new", "old_rows", "old_file"):
        runs[name] = tmp_path / name
        shutil.copytree(first, runs[name])
        (runs[name] / "config.yaml").write_text(
            (first / "config.yaml").read_text().replace(str(first), str(runs[name]))
        )
    make_old_style(runs["old_rows"], rows_in_checkpoint=True)
    make_old_style(runs["old_file"], rows_in_checkpoint=False)

    assert main(["train", "--resume", str(runs["new"]), "train.epochs=2"]) == 0
    for name in ("old_rows", "old_file"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            assert main(["train", "--resume", str(runs[name]), "train.epochs=2"]) == 0
        said = " | ".join(messages(record, FutureWarning))
        assert "gpd.kd_weight" in said and "'gpd.*'" in said and "'network.teacher.*'" in said, said
        assert "'module.teacher.*'" in said, said
        assert "teacher_acc" in said, said

    reference = runs["new"]
    expected_student = torch.load(reference / "student.pt", weights_only=True)["state_dict"]
    for name in ("old_rows", "old_file"):
        run = runs[name]
        student = torch.load(run / "student.pt", weights_only=True)["state_dict"]
        assert student.keys() == expected_student.keys()
        assert all(torch.equal(student[k], expected_student[k]) for k in student), name  # bit-identical
        assert metrics_without_timing(run) == metrics_without_timing(reference), name
        assert "kd_weight" not in (run / "config.yaml").read_text()  # rewritten with the new names
        saved = load_checkpoint(run / "checkpoint.pt")["model"]
        assert not any(k.startswith(("gpd.", "network.teacher.")) for k in saved)  # written with the new keys
