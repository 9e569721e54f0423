"""The name of every file in a run directory, and in a report folder, in one place.

``gpd train`` writes ``config.yaml`` (the resolved config), ``metrics.csv`` (one row per
epoch), ``checkpoint.pt`` (the full training state), ``student.pt`` (the exported student)
and ``tensorboard/``; ``gpd export`` adds ``student.<format>`` (or the folder ``student_hf``) beside student.pt and
``gpd report`` the folder ``report/``. Code that reads or writes a run names its files
through :class:`RunLayout` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

EXPORT_SUFFIXES: dict[str, str] = {"pt": ".pt", "safetensors": ".safetensors", "onnx": ".onnx", "hf": "_hf"}


@dataclass(frozen=True)
class ReportLayout:
    """A ``gpd report`` folder: report.md and its figures."""

    root: Path

    REPORT: ClassVar[str] = "report.md"
    FIGURES: ClassVar[tuple[str, ...]] = (
        "accuracy.png", "gap.png", "losses.png", "lr.png", "gradients.png", "metrics.png",
    )  # fmt: skip

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    def figure(self, name: str) -> Path:
        if name not in self.FIGURES:
            raise ValueError(f"{name!r} is not a report figure ({', '.join(self.FIGURES)})")
        return self.root / name


@dataclass(frozen=True)
class RunLayout:
    """The files of the run directory ``root``."""

    root: Path  # a str is taken too

    CONFIG: ClassVar[str] = "config.yaml"
    METRICS: ClassVar[str] = "metrics.csv"
    CHECKPOINT: ClassVar[str] = "checkpoint.pt"
    STUDENT: ClassVar[str] = "student.pt"
    TENSORBOARD: ClassVar[str] = "tensorboard"
    REPORT: ClassVar[str] = "report"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def checkpoint(self) -> Path:
        return self.root / self.CHECKPOINT

    @property
    def student(self) -> Path:
        return self.root / self.STUDENT

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def report(self) -> ReportLayout:
        """The default folder of ``gpd report RUN_DIR``."""
        return ReportLayout(self.root / self.REPORT)

    def exported(self, fmt: str) -> Path:
        """Where ``gpd export RUN_DIR --format FMT`` writes by default."""
        return export_path(self.student, fmt)

    def training_files(self) -> tuple[Path, ...]:
        """What ``gpd train`` writes (and ``--overwrite`` clears, but for config.yaml)."""
        return (self.config, self.metrics, self.checkpoint, self.student, self.tensorboard)

    def all_paths(self) -> tuple[Path, ...]:
        """Every file and folder a run directory may hold."""
        exports = tuple(self.exported(fmt) for fmt in EXPORT_SUFFIXES if fmt != "pt")
        return (*self.training_files(), *exports, self.report.root)


def export_path(student_file: Path, fmt: str) -> Path:
    """Next to the student file, same stem: runs/x/student.pt -> runs/x/student.onnx; a folder
    for ``hf`` (a save_pretrained directory): runs/x/student_hf."""
    suffix = EXPORT_SUFFIXES[fmt]
    if not suffix.startswith("."):
        return student_file.with_name(student_file.stem + suffix)
    return student_file.with_suffix(suffix)


def student_file_of(path: str | Path) -> Path:
    """The student.pt named by ``path``: the file itself, or the one in a run directory."""
    path = Path(path)
    return RunLayout(path).student if path.is_dir() else path
