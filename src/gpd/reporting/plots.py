"""The report's figures: accuracy (a task's headline metric: mIoU), gap, losses, learning rate and a
task's other metrics (pixel accuracy) per epoch.

Every figure is a standalone :class:`matplotlib.figure.Figure` on an Agg canvas,
never pyplot, so no global figure state is shared between plots, with tests, or with
a caller's own pyplot session. The builders return the figure (or ``None`` when
there is nothing to plot); :func:`save_figure` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from gpd.io.atomic import atomic_write
from gpd.reporting.runs import RunRecord, headline_of, metric_label, other_metrics

LineStyle = Literal["-", "--", "-.", ":"] | tuple[float, Sequence[float]]

DPI = 110
MARKERS_UP_TO = 30  # epochs; beyond this markers clutter the lines
ZOOM_FROM_EPOCHS = 6  # runs this long get a zoomed panel of their second half
RUN_COLOURS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]


@dataclass(frozen=True)
class Role:
    """A model whose accuracy is plotted, and how its line looks."""

    column: str
    name: str
    linestyle: LineStyle
    colour: str  # used when there is a single run, so roles are told apart by colour too


ROLES = [
    Role("student_acc", "student", "-", "C0"),
    Role("dynamic_acc", "dynamic teacher", "-.", "C1"),
    Role("static_teacher_acc", "static teacher", "--", "C2"),
    Role("ema_student_acc", "EMA student", ":", "C3"),
    Role("ema_dynamic_acc", "EMA dynamic teacher", (0, (3, 1, 1, 1, 1, 1)), "C4"),
]


def metric_roles(metric: str) -> list[Role]:
    """:data:`ROLES` for a task metric's columns (``pixel_acc_student``, ``pixel_acc_dynamic`` ...)."""
    return [replace(role, column=f"{metric}_{role.column.removesuffix('_acc')}") for role in ROLES]


def run_colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _marker(run: RunRecord) -> str | None:
    return "o" if len(run.rows) <= MARKERS_UP_TO else None


def _nested_width(index: int, count: int) -> float:
    """Earlier runs drawn thicker, so runs with identical curves (a shared lr schedule) stay visible."""
    return 1.6 if count == 1 else 1.4 + 2.2 * (count - 1 - index) / (count - 1)


def _epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _legend_outside(ax: Axes, handles: list[Line2D], title: str | None, upper: bool = True) -> None:
    """A legend right of the axes, so it never hides a curve; several can sit on one axes."""
    legend = Legend(
        ax,
        handles,
        [str(h.get_label()) for h in handles],
        title=title,
        loc="upper left" if upper else "lower left",
        bbox_to_anchor=(1.02, 1.0 if upper else 0.0),
        borderaxespad=0.0,
        fontsize="small",
        title_fontsize="small",  # type: ignore[arg-type]  # matplotlib accepts the size names, its stub says float
    )
    ax.add_artist(legend)
    legend.set_clip_on(False)  # add_artist clips to the axes, which would hide a legend placed outside


def _title(runs: Sequence[RunRecord], what: str) -> str:
    return f"{what} — {runs[0].label}" if len(runs) == 1 else f"{what} — {len(runs)} runs"


def _legend_room(labels: Sequence[str]) -> float:
    """Inches to add to a figure's width for a legend of these labels right of the axes."""
    return 0.9 + 0.065 * max((len(label) for label in labels), default=0)


def _plot_accuracies(
    ax: Axes, runs: Sequence[RunRecord], first_epoch: float = 0.0, roles: Sequence[Role] = ROLES
) -> list[Role]:
    """Draw every role of every run from ``first_epoch`` on; returns the roles drawn, in legend order."""
    single = len(runs) == 1
    drawn: list[Role] = []
    for i, run in enumerate(runs):
        pairs = [(e, row) for e, row in zip(run.epochs, run.rows) if e is not None and e >= first_epoch]
        for role in roles:
            if not run.has(role.column):
                continue
            if role not in drawn:
                drawn.append(role)
            static = role.name == "static teacher"
            ax.plot(
                [e for e, _ in pairs],
                [math.nan if (v := row.get(role.column)) is None else v for _, row in pairs],
                color=role.colour if single else run_colour(i),
                linestyle=role.linestyle,
                linewidth=1.2 if static else 1.8,
                marker=None if static and len(pairs) > 1 else _marker(run),
                markersize=3,
            )
    return [role for role in roles if role in drawn]


def _zoom_start(runs: Sequence[RunRecord]) -> float | None:
    """First epoch of the zoomed panel (the second half of training), or ``None`` for short runs."""
    last = max((e for run in runs for e in run.epochs if e is not None), default=0.0)
    return math.floor(last / 2) + 1 if last >= ZOOM_FROM_EPOCHS else None


def accuracy_figure(runs: Sequence[RunRecord]) -> Figure:
    """Test accuracy per epoch of every model a run evaluates: one colour per run, one line style per role.
    A task's headline metric (the ``*_acc`` columns: mIoU for segmentation) is named as such.

    Runs of several epochs get a second panel zoomed on the second half of training,
    where runs differ by fractions of a point that the full range flattens.
    """
    single = len(runs) == 1
    zoom_from = _zoom_start(runs)
    labels = [r.name for r in ROLES] + ([] if single else [run.label for run in runs])
    fig = _new_figure(7.5 + _legend_room(labels), 8.0 if zoom_from else 5.0)
    axes = fig.subplots(2 if zoom_from else 1, 1, squeeze=False)[:, 0]
    headline = headline_of(runs)
    roles = _plot_accuracies(axes[0], runs)
    axes[0].set_title(_title(runs, f"Test {headline} per epoch"))
    if zoom_from is not None:
        _plot_accuracies(axes[1], runs, first_epoch=zoom_from)
        axes[1].set_title(f"zoom: epochs {zoom_from:g} and later", fontsize="medium")
    for ax in axes:
        _epoch_axis(ax)
        ax.set_ylabel(f"test {headline} (%)")
    _role_legends(axes[0], axes[-1], runs, roles, upper=zoom_from is not None)
    return fig


def _role_legends(first: Axes, last: Axes, runs: Sequence[RunRecord], roles: Sequence[Role], upper: bool) -> None:
    """The legend of the models (line styles) and, for several runs, of the runs (colours)."""
    single = len(runs) == 1
    role_handles = [
        Line2D([], [], color=r.colour if single else "0.2", linestyle=r.linestyle, linewidth=1.8, label=r.name)
        for r in roles
    ]
    if single:
        _legend_outside(first, role_handles, "model")
    else:
        run_handles = [Line2D([], [], color=run_colour(i), linewidth=3, label=run.label) for i, run in enumerate(runs)]
        _legend_outside(first, run_handles, "run")
        _legend_outside(last, role_handles, "model", upper=upper)


def metrics_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """A task's metrics besides its headline (segmentation: pixel accuracy) per epoch, one panel
    each, drawn as the accuracy figure; ``None`` for runs without (classification)."""
    others = other_metrics(runs)
    if not others:
        return None
    labels = [r.name for r in ROLES] + ([] if len(runs) == 1 else [run.label for run in runs])
    fig = _new_figure(7.5 + _legend_room(labels), 1.0 + 4.0 * len(others))
    axes = fig.subplots(len(others), 1, squeeze=False)[:, 0]
    drawn: list[Role] = []
    for ax, metric in zip(axes, others):
        drawn += [
            r for r in _plot_accuracies(ax, runs, roles=metric_roles(metric)) if r.name not in {d.name for d in drawn}
        ]
        ax.set_title(_title(runs, f"Test {metric_label(metric)} per epoch"), fontsize="medium")
        ax.set_ylabel(f"test {metric_label(metric)} (%)")
        _epoch_axis(ax)
    _role_legends(
        axes[0], axes[-1], runs, [r for r in ROLES if r.name in {d.name for d in drawn}], upper=len(others) > 1
    )
    return fig


def gap_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Dynamic teacher minus student accuracy per epoch; ``None`` when no run has a dynamic teacher."""
    with_dynamic = [(i, run) for i, run in enumerate(runs) if run.has("dynamic_acc")]
    if not with_dynamic:
        return None
    fig = _new_figure(7.5 + (_legend_room([r.label for _, r in with_dynamic]) if len(runs) > 1 else 0.0), 4.5)
    ax = fig.add_subplot()
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    handles = []
    for i, run in with_dynamic:
        gaps = [
            d - s if d is not None and s is not None else math.nan
            for d, s in zip(run.values("dynamic_acc"), run.values("student_acc"))
        ]
        (line,) = ax.plot(
            run.series("epoch"), gaps, color=run_colour(i), marker=_marker(run), markersize=3, label=run.label
        )
        handles.append(line)
    if len(runs) > 1:
        _legend_outside(ax, handles, "run")
    _epoch_axis(ax)
    headline = headline_of(runs)
    ax.set_ylabel(f"dynamic teacher − student {headline} (points)")
    ax.set_title(_title([r for _, r in with_dynamic], f"Gap: dynamic teacher − student test {headline}"))
    return fig


def _term_title(term: str) -> str:
    return "train_loss (total)" if term == "train_loss" else term.removeprefix("loss_")


def losses_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """One small plot per loss term, each with every run that has the term."""
    terms: list[str] = []
    for run in runs:
        terms += [t for t in run.loss_terms if t not in terms]
    if not terms:
        return None
    ncols = 1 if len(terms) == 1 else 2 if len(terms) <= 4 else 3
    nrows = math.ceil(len(terms) / ncols)
    legend_room = _legend_room([r.label for r in runs]) if len(runs) > 1 else 0.0
    fig = _new_figure(4.3 * ncols + legend_room, 3.0 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, term in enumerate(terms):
        ax = axes[k // ncols][k % ncols]
        for i, run in enumerate(runs):
            if run.has(term):
                ax.plot(
                    run.series("epoch"),
                    run.series(term),
                    color=run_colour(i),
                    linewidth=_nested_width(i, len(runs)),
                    marker=_marker(run),
                    markersize=3,
                )
        ax.set_title(_term_title(term), fontsize="medium")
        _epoch_axis(ax)
        ax.set_ylabel("loss")
    for k in range(len(terms), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    if len(runs) > 1:
        handles = [Line2D([], [], color=run_colour(i), linewidth=3, label=run.label) for i, run in enumerate(runs)]
        fig.legend(handles=handles, title="run", loc="outside right upper", fontsize="small", title_fontsize="small")
    fig.suptitle(_title(runs, "Training loss terms per epoch (mean over the epoch)"))
    return fig


def lr_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Learning rate at the end of each epoch; ``None`` when no run records it."""
    with_lr = [(i, run) for i, run in enumerate(runs) if run.has("lr")]
    if not with_lr:
        return None
    fig = _new_figure(7.5 + (_legend_room([r.label for _, r in with_lr]) if len(runs) > 1 else 0.0), 4.0)
    ax = fig.add_subplot()
    handles = []
    for i, run in with_lr:
        (line,) = ax.plot(
            run.series("epoch"),
            run.series("lr"),
            color=run_colour(i),
            linewidth=_nested_width(i, len(runs)),
            marker=_marker(run),
            markersize=3,
            label=run.label,
        )
        handles.append(line)
    if len(runs) > 1:
        _legend_outside(ax, handles, "run")
    _epoch_axis(ax)
    ax.set_ylabel("learning rate (end of epoch)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title(_title([r for _, r in with_lr], "Learning rate per epoch"))
    return fig


GRADIENT_COLUMNS = {
    "grad_norm": "global norm before clipping",
    "grad_norm_student": "student's loss terms",
    "grad_norm_dynamic": "dynamic teacher's loss terms",
}


def gradients_figure(runs: Sequence[RunRecord]) -> Figure | None:
    """Gradient norms per epoch (global, and the student's and D's loss terms apart) and the
    fraction of clipped steps; ``None`` when no run records them (runs before gpd logged them)."""
    with_norms = [(i, run) for i, run in enumerate(runs) if run.has("grad_norm")]
    if not with_norms:
        return None
    clipped = any(run.has("clipped_frac") for _, run in with_norms)
    legend_room = _legend_room([r.label for _, r in with_norms]) if len(runs) > 1 else 0.0
    fig = _new_figure(9.0 + legend_room, 4.0)
    axes = fig.subplots(1, 2 if clipped else 1, squeeze=False)[0]
    styles: dict[str, LineStyle] = {"grad_norm": "-", "grad_norm_student": "--", "grad_norm_dynamic": ":"}
    for i, run in with_norms:
        for column, style in styles.items():
            if run.has(column):
                axes[0].plot(
                    run.series("epoch"),
                    run.series(column),
                    color=run_colour(i),
                    linestyle=style,
                    marker=_marker(run),
                    markersize=3,
                )
        if clipped and run.has("clipped_frac"):
            axes[1].plot(
                run.series("epoch"), run.series("clipped_frac"), color=run_colour(i), marker=_marker(run), markersize=3
            )
    axes[0].set_yscale("log")
    axes[0].set_ylabel("gradient norm (mean over the epoch)")
    axes[0].set_title("Gradient norms", fontsize="medium")
    _epoch_axis(axes[0])
    handles = [Line2D([], [], color="0.3", linestyle=style, label=GRADIENT_COLUMNS[c]) for c, style in styles.items()]
    axes[0].legend(handles=handles, fontsize="small")
    if clipped:
        axes[1].set_ylim(-0.02, 1.02)
        axes[1].set_ylabel("fraction of steps clipped")
        axes[1].set_title("Clipped steps", fontsize="medium")
        _epoch_axis(axes[1])
    if len(runs) > 1:
        run_handles = [Line2D([], [], color=run_colour(i), linewidth=3, label=run.label) for i, run in with_norms]
        fig.legend(
            handles=run_handles, title="run", loc="outside right upper", fontsize="small", title_fontsize="small"
        )
    fig.suptitle(_title([r for _, r in with_norms], "Gradients per epoch"))
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write a PNG through a temporary file and a rename, so an old image is replaced whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.15))
