"""A run directory: chosen, checked and created before the first epoch.

Nothing that exists is overwritten unless asked: a run directory that already holds
files is refused. The files of a run are named by :class:`~gpd.io.layout.RunLayout`
and every one is written atomically (:mod:`gpd.io.atomic`), so a crash never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from gpd.config import Config, to_yaml
from gpd.errors import ConfigError
from gpd.io.atomic import atomic_write_text
from gpd.io.layout import RunLayout


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
    if content - {RunLayout.CONFIG} and not overwrite:
        raise ConfigError(
            f"output_dir {run_dir} already holds a run; continue it with --resume {run_dir}, "
            "choose another output_dir, or pass --overwrite to replace it"
        )
    return run_dir


def create_run_dir(cfg: Config, run_dir: Path, overwrite: bool = False) -> Path:
    """Create ``run_dir`` (clearing the previous run's files if ``overwrite``) and write config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    layout = RunLayout(run_dir)
    if overwrite:
        for path in (layout.metrics, layout.checkpoint, layout.student):
            path.unlink(missing_ok=True)
        shutil.rmtree(layout.tensorboard, ignore_errors=True)
    cfg.output_dir = str(run_dir)
    atomic_write_text(layout.config, to_yaml(cfg))
    return run_dir


def prepare_run_dir(cfg: Config, overwrite: bool = False) -> Path:
    """Choose and create the run directory of ``cfg`` in one step."""
    return create_run_dir(cfg, choose_run_dir(cfg, overwrite), overwrite)


def rewrite_config(cfg: Config) -> Path:
    """Resume: the run directory exists; write its (possibly extended) config.yaml again."""
    run_dir = Path(cfg.output_dir)  # type: ignore[arg-type]
    atomic_write_text(RunLayout(run_dir).config, to_yaml(cfg))
    return run_dir
