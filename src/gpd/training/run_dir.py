"""A run directory: resolved config, metrics, checkpoint and exported student.

Nothing that exists is overwritten unless asked: a run directory that already holds
files is refused, and every file is written to a temporary name first and renamed,
so a crash never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gpd.config import Config, to_yaml
from gpd.deprecated import upgrade_columns
from gpd.errors import ConfigError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
CHECKPOINT_FILE = "checkpoint.pt"
STUDENT_FILE = "student.pt"
TENSORBOARD_DIR = "tensorboard"


def default_output_dir(cfg: Config) -> Path:
    mode = f"gpd{cfg.gpd.ratio:g}" if cfg.gpd.enabled else "baseline"
    student = cfg.model.student.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{cfg.data.name}-{student}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def choose_run_dir(cfg: Config, overwrite: bool = False) -> Path:
    """The run directory of ``cfg``, checked but not created: one that already holds a run
    is refused unless ``overwrite`` (a folder holding only the config.yaml of a start that
    failed before its first epoch is reused)."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir {run_dir} exists and is not a directory")
    content = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if content - {CONFIG_FILE} and not overwrite:
        raise ConfigError(
            f"output_dir {run_dir} already holds a run; continue it with --resume {run_dir}, "
            "choose another output_dir, or pass --overwrite to replace it"
        )
    return run_dir


def create_run_dir(cfg: Config, run_dir: Path, overwrite: bool = False) -> Path:
    """Create ``run_dir`` (clearing the previous run's files if ``overwrite``) and write config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in (METRICS_FILE, CHECKPOINT_FILE, STUDENT_FILE):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    cfg.output_dir = str(run_dir)
    atomic_write_text(run_dir / CONFIG_FILE, to_yaml(cfg))
    return run_dir


def prepare_run_dir(cfg: Config, overwrite: bool = False) -> Path:
    """Choose and create the run directory of ``cfg`` in one step."""
    return create_run_dir(cfg, choose_run_dir(cfg, overwrite), overwrite)


def rewrite_config(cfg: Config) -> Path:
    """Resume: the run directory exists; write its (possibly extended) config.yaml again."""
    run_dir = Path(cfg.output_dir)  # type: ignore[arg-type]
    atomic_write_text(run_dir / CONFIG_FILE, to_yaml(cfg))
    return run_dir


def _temp_in(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path``, with the permissions a plain open() would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = _temp_in(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    fd, tmp = _temp_in(path)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MetricsCSV:
    """One row per epoch; the header comes from the first row's keys.

    On resume, :meth:`rewrite` puts back the rows the checkpoint holds (the row of each
    epoch is written before its checkpoint, and kept in it, so neither a gap nor a
    duplicate survives a crash between the two writes); :meth:`truncate` does the same
    from the file alone for older checkpoints without rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None

    def truncate(self, last_epoch: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) <= last_epoch]
        if reader.fieldnames:
            fields = list(reader.fieldnames)
            names = dict(zip(fields, upgrade_columns(fields, str(self.path))))  # a run of an older gpd
            rows = [{names[k]: v for k, v in row.items() if k in names} for row in rows]
            self.rewrite(rows, fields=list(names.values()))

    def rewrite(self, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
        """Replace the file by ``rows`` (a resume: the rows its checkpoint holds), atomically;
        ``fields``: the header (default: the first row's keys)."""
        if not rows and fields is None:
            self.path.unlink(missing_ok=True)
            self.fields = None
            return
        self.fields = fields or list(rows[0])
        fd, tmp = _temp_in(self.path)
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: _fmt(row.get(k)) for k in self.fields} for row in rows)
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        new_file = self.fields is None
        if self.fields is None:
            self.fields = list(row)
        with open(self.path, "a" if not new_file else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.fields})


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
