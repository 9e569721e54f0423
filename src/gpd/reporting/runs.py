"""Read finished (or running) training runs back from their run directories.

A run directory written by ``gpd train`` holds ``config.yaml`` and ``metrics.csv``
(:class:`~gpd.io.layout.RunLayout`);
this module turns them into a :class:`RunRecord` that the plots and the summary share,
so that the CSV is parsed, and its errors reported, in one place.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from gpd.deprecated import upgrade_columns
from gpd.errors import DataError
from gpd.io.layout import RunLayout

LOSS_PREFIX = "loss_"

Row = dict[str, float | None]

NOT_TASK_METRICS = ("loss_", "val_", "grad_")  # columns ending in _student that are no task metric
METRIC_LABELS = {"miou": "mIoU", "pixel_acc": "pixel accuracy", "top1": "accuracy"}


def metric_label(metric: str) -> str:
    """A task metric's name as a report writes it (``miou`` -> ``mIoU``); a user's metric: its own name."""
    return METRIC_LABELS.get(metric, metric)


@dataclass
class RunRecord:
    """One run: where it lives, how it is labelled in a report, its config and metrics.

    ``rows`` holds one dict per epoch, column name to number; an empty cell (a
    column that does not apply to the run) is ``None``.
    """

    path: Path
    label: str
    config: dict[str, Any]
    rows: list[Row]

    @property
    def columns(self) -> list[str]:
        """The metrics.csv columns, in file order."""
        return list(self.rows[0]) if self.rows else []

    @property
    def epochs(self) -> list[float | None]:
        return self.values("epoch")

    @property
    def loss_terms(self) -> list[str]:
        """``train_loss`` and the ``loss_<term>`` columns that hold a value."""
        names = ["train_loss"] + [c for c in self.columns if c.startswith(LOSS_PREFIX)]
        return [name for name in names if self.has(name)]

    def values(self, column: str) -> list[float | None]:
        """One value per epoch; ``None`` where the cell is empty or the column absent."""
        return [row.get(column) for row in self.rows]

    def series(self, column: str) -> list[float]:
        """:meth:`values` with NaN for the missing cells: what matplotlib draws as gaps."""
        return [math.nan if v is None else v for v in self.values(column)]

    def has(self, column: str) -> bool:
        """Whether any epoch has a (non-NaN) value in ``column``."""
        return any(_is_number(v) for v in self.values(column))

    def last(self, column: str) -> float | None:
        """The value of the last epoch that has one."""
        numbers = [v for v in self.values(column) if _is_number(v)]
        return numbers[-1] if numbers else None

    def best(self, column: str) -> tuple[float, float | None] | None:
        """The largest value and the epoch it was reached (first one on ties), or ``None``."""
        pairs = [(v, e) for v, e in zip(self.values(column), self.epochs) if _is_number(v)]
        if not pairs:
            return None
        top = max(v for v, _ in pairs)
        return next((v, e) for v, e in pairs if v == top)

    def total(self, column: str) -> float | None:
        numbers = [v for v in self.values(column) if _is_number(v)]
        return sum(numbers) if numbers else None

    @property
    def task_metrics(self) -> list[str]:
        """The task's metrics that metrics.csv has columns for (``miou``, ``pixel_acc`` for
        segmentation; a user's task: its own), headline first; empty for classification, whose
        ``*_acc`` columns hold top-1 accuracy. Read from the header: gpd train writes the
        ``<metric>_student`` columns right after ``static_teacher_acc``, in the task's order."""
        columns = self.columns
        start = columns.index("static_teacher_acc") + 1 if "static_teacher_acc" in columns else 0
        return [
            c.removesuffix("_student")
            for c in columns[start:]
            if c.endswith("_student") and not c.startswith(NOT_TASK_METRICS) and not c.endswith("_ema_student")
        ]

    @property
    def headline(self) -> str:
        """What the ``*_acc`` columns hold, as people read it: ``accuracy`` (classification),
        ``mIoU`` (segmentation), or a user's task's first metric."""
        metrics = self.task_metrics
        if metrics:
            return metric_label(metrics[0])
        task = self.setting("task")
        return "mIoU" if task == "segmentation" else "accuracy"

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``"gpd.ratio"``), or ``default`` when absent."""
        node: Any = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node


def headline_of(runs: Sequence[RunRecord]) -> str:
    """What the runs' ``*_acc`` columns hold (:attr:`RunRecord.headline`): ``accuracy``, ``mIoU``
    or a user's metric; runs of several tasks: their headlines joined by " / "."""
    found: list[str] = []
    for run in runs:
        if run.headline not in found:
            found.append(run.headline)
    return " / ".join(found)


def other_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The task metrics besides the headline (segmentation: ``pixel_acc``) of any run, in order."""
    found: list[str] = []
    for run in runs:
        found += [m for m in run.task_metrics[1:] if m not in found]
    return found


def _is_number(value: float | None) -> TypeGuard[float]:
    return value is not None and not math.isnan(value)


def read_run(path: str | Path, label: str | None = None) -> RunRecord:
    """Read one run directory; a :class:`DataError` says what is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"run directory {path} does not exist; pass a directory written by gpd train")
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; pass a run directory written by gpd train")
    layout = RunLayout(path)
    return RunRecord(
        path=path,
        label=label or _name_of(path),
        config=read_config(layout.config),
        rows=read_metrics(layout.metrics),
    )


def read_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Read several runs, with labels made unique when directory names repeat."""
    return [read_run(path, label) for path, label in zip(paths, unique_labels([Path(p) for p in paths]))]


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Directory names; a repeated name gets its parent folder in front, then a counter if still repeated."""
    names = [_name_of(p) for p in paths]
    labels = [
        f"{p.resolve().parent.name}/{name}" if names.count(name) > 1 and p.resolve().parent.name else name
        for p, name in zip(paths, names)
    ]
    seen: dict[str, int] = {}
    result = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        result.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return result


def _name_of(path: Path) -> str:
    return path.resolve().name or str(path)


def read_config(path: Path) -> dict[str, Any]:
    """The run's config as plain dicts; ``{}`` when the run has no config.yaml."""
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path} cannot be read as YAML ({reason}); restore it from the run or delete it") from None
    return loaded if isinstance(loaded, dict) else {}


def read_metrics(path: Path) -> list[Row]:
    """Parse metrics.csv: numbers, ``None`` for empty cells; refuse anything else."""
    if not path.is_file():
        raise DataError(
            f"{path.parent} has no {RunLayout.METRICS}; pass a run directory written by gpd train "
            "(it writes the file after the first epoch)"
        )
    try:
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise DataError(f"{path} is not a readable CSV file ({type(err).__name__}); restore it from the run") from None
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise DataError(f"{path} is empty; report the run once it has finished an epoch")
    header = upgrade_columns([name.strip() for name in lines[0]], str(path))  # a run of an older gpd: old names
    if "epoch" not in header:
        raise DataError(f"{path} has no 'epoch' column in its header; it is not a metrics file written by gpd train")
    if len(lines) == 1:
        raise DataError(f"{path} has a header but no epochs; report the run once it has finished an epoch")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) > len(header):
            raise DataError(
                f"{path} line {number} has {len(line)} cells for {len(header)} columns; fix or delete that line"
            )
        rows.append({name: _number(path, number, name, cell) for name, cell in zip(header, line)})
        rows[-1].update({name: None for name in header[len(line) :]})  # a cut-off last line
        if rows[-1]["epoch"] is None:
            raise DataError(f"{path} line {number} has no epoch number; fix or delete that line")
    return rows


def _number(path: Path, line: int, column: str, cell: str) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        raise DataError(
            f"{path} line {line}: column '{column}' holds {cell!r}, not a number; fix or delete that line"
        ) from None
