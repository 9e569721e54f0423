"""An epoch's metrics row (one line of metrics.csv), its printed summary and its TensorBoard tags."""

from __future__ import annotations

from typing import Any

GRAD_STATS = ("grad_norm", "clipped_frac", "grad_norm_student", "grad_norm_dynamic")
TRAIN_STATS = ("train_acc", "train_seconds", "img_per_s", "skipped_steps", *GRAD_STATS)


def epoch_row(
    epoch: int,
    lr: float,
    train: dict[str, float],
    acc: dict[str, float],
    *,
    static_teacher_acc: float | None,
    has_ema: bool,
    has_val: bool,
    counts_skipped: bool,
) -> dict[str, Any]:
    """The columns of an epoch, in metrics.csv's order (without ``seconds``, added last).

    ``train``: the epoch's training means and statistics; ``acc``: the evaluated accuracies
    (keys ``student``, ``dynamic``, ``ema_*`` and ``val_*``); an empty cell is ``""``."""
    row: dict[str, Any] = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train["loss"] if "loss" in train else float("nan"),
        **{f"loss_{k}": v for k, v in train.items() if k not in ("loss", *TRAIN_STATS)},
        "train_acc": train.get("train_acc", ""),  # the student's, on the training batches (augmented, as trained)
        "student_acc": acc["student"],
        "dynamic_acc": acc.get("dynamic", ""),
        "gap": acc["dynamic"] - acc["student"] if "dynamic" in acc else "",
        "static_teacher_acc": static_teacher_acc if static_teacher_acc is not None else "",
    }
    # a non-classification task's metrics (split_metrics' "model:metric" keys, in percent): miou_student,
    # pixel_acc_dynamic, val_miou_student ...; the *_acc columns above then hold the first (headline) metric
    for key, value in acc.items():
        if ":" in key:
            model, metric = key.split(":", 1)
            prefix, model = ("val_", model[4:]) if model.startswith("val_") else ("", model)
            row[f"{prefix}{metric}_{model}"] = value
    if has_ema:
        row["ema_student_acc"] = acc["ema_student"]
        row["ema_dynamic_acc"] = acc.get("ema_dynamic", "")
    if has_val:  # validation columns apart from the test columns above
        for name in ("student", "dynamic", "ema_student", "ema_dynamic"):
            if has_ema or not name.startswith("ema"):
                row[f"val_{name}_acc"] = acc.get(f"val_{name}", "")
    if counts_skipped:
        row["skipped_steps"] = train["skipped_steps"]
    row.update({k: train[k] for k in GRAD_STATS if k in train})
    row["img_per_s"] = train["img_per_s"]
    return row


def summary_line(
    epoch: int, epochs: int, row: dict[str, Any], acc: dict[str, float], static_teacher_acc: float | None, has_ema: bool
) -> str:
    """The line printed after each epoch (a non-classification task: its headline metric, e.g. miou, named)."""
    metric = next((f" {k.split(':', 1)[1]}" for k in acc if k.startswith("student:")), "")
    line = f"epoch {epoch}/{epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  student{metric} {acc['student']:.2f}%"
    if "dynamic" in acc:
        line += f"  dynamic teacher {acc['dynamic']:.2f}%  gap {row['gap']:+.2f}"
    if has_ema:
        line += f"  EMA student {acc['ema_student']:.2f}%"
    if "val_student" in acc:
        line += f"  (validation: student {acc['val_student']:.2f}%)"
    if static_teacher_acc is not None:
        line += f"  static teacher {static_teacher_acc:.2f}%"
    return line + f"  {row['img_per_s']:.0f} img/s  {row['seconds']:.1f} s"


def tensorboard_tag(column: str) -> str:
    """Group metrics.csv columns into TensorBoard sections."""
    if column.endswith("_acc") or column.startswith(("miou_", "pixel_acc_", "val_miou_", "val_pixel_acc_")):
        return f"accuracy/{column.removesuffix('_acc')}"
    if column.startswith("loss_") or column == "train_loss":
        return f"loss/{column.removeprefix('loss_')}"
    return f"train/{column}"
