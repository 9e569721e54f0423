"""Write the report of one or more run directories: figures and a markdown summary (``gpd report``).

One run reports into ``RUN_DIR/report/``; several runs need ``--output``, since no
single run directory is the obvious home of a comparison. Everything is read and
drawn before anything is written, and an existing report is never replaced without
``overwrite``, so a mistyped command cannot destroy an earlier report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from gpd.errors import ConfigError
from gpd.io.atomic import atomic_write_text
from gpd.io.layout import ReportLayout, RunLayout
from gpd.reporting.plots import (
    accuracy_figure,
    gap_figure,
    gradients_figure,
    losses_figure,
    lr_figure,
    metrics_figure,
    save_figure,
)
from gpd.reporting.runs import RunRecord, read_runs
from gpd.reporting.summary import figure_captions, render_report


@dataclass(frozen=True)
class ReportResult:
    """What ``gpd report`` wrote, for the printed summary."""

    output: Path
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def resolve_output(run_dirs: Sequence[str | Path], output: str | Path | None) -> Path:
    """``RUN_DIR/report`` for one run; several runs must name the folder."""
    if output is not None:
        target = Path(output)
    elif len(run_dirs) == 1:
        target = RunLayout(Path(run_dirs[0])).report.root
    else:
        raise ConfigError(f"{len(run_dirs)} runs need a folder for their report; pass --output DIR")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--output {target} exists and is not a directory; choose a folder with --output")
    return target


def build_figures(runs: Sequence[RunRecord]) -> tuple[dict[str, Figure], list[str]]:
    """The figures by file name, and notes on the ones left out."""
    figures: dict[str, Figure] = {"accuracy.png": accuracy_figure(runs)}  # names: ReportLayout.FIGURES
    notes = []
    optional = {
        "gap.png": gap_figure(runs),
        "losses.png": losses_figure(runs),
        "lr.png": lr_figure(runs),
        "gradients.png": gradients_figure(runs),
        "metrics.png": metrics_figure(runs),  # a task's other metrics: segmentation's pixel accuracy
    }
    for name, fig in optional.items():
        if fig is not None:
            figures[name] = fig
    if "gap.png" not in figures:
        notes.append(
            "No gap plot: no run has a dynamic teacher (dynamic_acc is empty)."
            if len(runs) > 1
            else "No gap plot: the run has no dynamic teacher (dynamic_acc is empty)."
        )
    return figures, notes


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    if overwrite:
        return
    for path in paths:
        if path.exists():
            raise ConfigError(
                f"{path} already exists; pass --overwrite to replace the report or choose another --output"
            )


def write_report(
    run_dirs: Sequence[str | Path], output: str | Path | None = None, overwrite: bool = False
) -> ReportResult:
    """Read the runs, draw the figures, then write the PNGs and report.md into the output folder."""
    target = resolve_output(run_dirs, output)
    runs = read_runs(run_dirs)
    figures, notes = build_figures(runs)
    layout = ReportLayout(target)
    files = [layout.figure(name) for name in figures] + [layout.report]
    refuse_existing(files, overwrite)
    target.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save_figure(fig, layout.figure(name))
    captions = figure_captions(runs)
    text = render_report(runs, {name: captions[name] for name in figures}, notes)
    atomic_write_text(layout.report, text)
    return ReportResult(output=target, files=files, notes=notes)
