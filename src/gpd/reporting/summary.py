"""The report's text: ``report.md`` with a comparison table, the figures and per-epoch tables.

Markdown, so the report reads well on a code host or in any editor, and the figures
are linked by relative paths so the report folder can be moved or shared whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from gpd.reporting.runs import RunRecord, headline_of, metric_label, other_metrics

MISSING = "—"
MAX_EPOCH_ROWS = 25  # longer runs show every k-th epoch, plus the best and the last

FIGURE_CAPTIONS = {
    "accuracy.png": "Test accuracy per epoch",
    "gap.png": "Gap between the dynamic teacher and the student",
    "losses.png": "Training loss terms per epoch",
    "lr.png": "Learning rate per epoch",
    "gradients.png": "Gradient norms and clipped steps per epoch",
    "metrics.png": "The task's other test metrics per epoch",
}


def figure_captions(runs: Sequence[RunRecord]) -> dict[str, str]:
    """:data:`FIGURE_CAPTIONS` in the runs' words: "Test mIoU per epoch" for segmentation."""
    headline, others = headline_of(runs), other_metrics(runs)
    captions = dict(FIGURE_CAPTIONS)
    captions["accuracy.png"] = f"Test {headline} per epoch"
    if others:
        captions["metrics.png"] = f"Test {', '.join(metric_label(m) for m in others)} per epoch"
    return captions


def _short(headline: str) -> str:
    """The headline in a column header: "acc" for accuracy (the headers classification reports have)."""
    return "acc" if headline == "accuracy" else headline


# (column, header) of the per-epoch tables; columns without any value are left out
EPOCH_COLUMNS = [
    ("epoch", "epoch"),
    ("lr", "lr"),
    ("train_loss", "train loss"),
    ("student_acc", "student acc (%)"),
    ("dynamic_acc", "dyn. teacher acc (%)"),
    ("gap", "gap"),
    ("ema_student_acc", "EMA student acc (%)"),
    ("ema_dynamic_acc", "EMA dyn. teacher acc (%)"),
    ("img_per_s", "img/s"),
    ("seconds", "time (s)"),
]


def acc(value: float | None) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.2f}"


def duration(seconds: float | None) -> str:
    """Seconds as people read them: 42.1 s, 4 min 15 s, 2 h 05 min."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def final_gap(run: RunRecord) -> float | None:
    """Dynamic teacher minus student accuracy at the last epoch that evaluated both."""
    pairs = [
        (d, s)
        for d, s in zip(run.values("dynamic_acc"), run.values("student_acc"))
        if d is not None and s is not None and not math.isnan(d - s)
    ]
    return pairs[-1][0] - pairs[-1][1] if pairs else None


def gpd_setting(run: RunRecord) -> str:
    enabled = run.setting("gpd.enabled")
    if enabled is None:
        return "on" if run.has("dynamic_acc") else MISSING
    if not enabled:
        return "off"
    ratio = run.setting("gpd.ratio")
    return f"on, r={ratio:g}" if isinstance(ratio, (int, float)) else "on"


def kd_setting(run: RunRecord) -> str:
    method = run.setting("kd.method") or "none"
    checkpoint = run.setting("teacher.checkpoint")
    teacher = run.setting("teacher.model") or (Path(str(checkpoint)).name if checkpoint else None)
    return f"{method} (teacher {teacher})" if teacher else str(method)


def epochs_done(run: RunRecord) -> str:
    planned = run.setting("train.epochs")
    done = len(run.rows)
    return f"{done} of {planned}" if isinstance(planned, int) and planned > done else str(done)


def _best(run: RunRecord) -> str:
    best = run.best("student_acc")
    if best is None:
        return MISSING
    value, epoch = best
    return f"{value:.2f} (epoch {epoch:g})" if epoch is not None else f"{value:.2f}"


def comparison_table(runs: Sequence[RunRecord]) -> list[str]:
    """One row per run: settings, final and best accuracies (a task's headline metric: mIoU), gap,
    the task's other metrics (pixel accuracy) of the student, D and the static teacher, time."""
    with_ema = any(run.has("ema_student_acc") for run in runs)
    short, others = _short(headline_of(runs)), other_metrics(runs)
    header = [
        "run",
        "student",
        "GPD",
        "KD",
        "epochs",
        f"final student {short} (%)",
        f"best student {short} (%)",
        f"final dyn. teacher {short} (%)",
        "final gap",
        f"static teacher {short} (%)",
    ]
    for metric in others:
        label = metric_label(metric)
        header += [f"final student {label} (%)", f"final dyn. teacher {label} (%)", f"static teacher {label} (%)"]
    header += [f"final EMA student {short} (%)"] if with_ema else []
    header += ["training time"]
    rows = []
    for run in runs:
        gap = final_gap(run)
        row = [
            run.label,
            run.setting("model.student", MISSING),
            gpd_setting(run),
            kd_setting(run),
            epochs_done(run),
            acc(run.last("student_acc")),
            _best(run),
            acc(run.last("dynamic_acc")),
            MISSING if gap is None else f"{gap:+.2f}",
            acc(run.last("static_teacher_acc")),
        ]
        for metric in others:
            row += [acc(run.last(f"{metric}_{model}")) for model in ("student", "dynamic", "static_teacher")]
        row += [acc(run.last("ema_student_acc"))] if with_ema else []
        row += [duration(run.total("seconds"))]
        rows.append(row)
    return _table(header, rows)


def _shown_epochs(run: RunRecord) -> list[int]:
    """Row indices of the per-epoch table: all of them, or every k-th plus the best and the last."""
    n = len(run.rows)
    if n <= MAX_EPOCH_ROWS:
        return list(range(n))
    step = math.ceil(n / (MAX_EPOCH_ROWS - 5))
    keep = set(range(0, n, step)) | {n - 1}
    best = run.best("student_acc")
    if best is not None and best[1] is not None:
        keep.add(run.epochs.index(best[1]))
    return sorted(keep)


def _format(column: str, value: float | None, percent: bool = False) -> str:
    if value is None or math.isnan(value):
        return MISSING
    if column == "epoch":
        return f"{value:g}"
    if column == "lr":
        return f"{value:.4g}"
    if column == "gap":
        return f"{value:+.2f}"
    if column in ("img_per_s", "seconds"):
        return f"{value:.0f}" if column == "img_per_s" else f"{value:.1f}"
    if percent or column.endswith("_acc"):
        return f"{value:.2f}"
    return f"{value:.4f}"


def _epoch_columns(run: RunRecord) -> list[tuple[str, str]]:
    """:data:`EPOCH_COLUMNS` with the run's headline metric in the headers ("student mIoU (%)"),
    and its task's other metrics of the student and D before the speed columns."""
    short = _short(run.headline)
    columns = [(c, h.replace(" acc (%)", f" {short} (%)")) for c, h in EPOCH_COLUMNS]
    extra = [
        (f"{metric}_{model}", f"{who} {metric_label(metric)} (%)")
        for metric in run.task_metrics[1:]
        for model, who in (("student", "student"), ("dynamic", "dyn. teacher"))
    ]
    at = [c for c, _ in columns].index("img_per_s")
    return [(c, h) for c, h in columns[:at] + extra + columns[at:] if run.has(c)]


def epoch_table(run: RunRecord) -> list[str]:
    columns = _epoch_columns(run)
    metrics = {f"{m}_{model}" for m in run.task_metrics for model in ("student", "dynamic")}
    shown = _shown_epochs(run)
    rows = [[_format(c, run.rows[i].get(c), c in metrics) for c, _ in columns] for i in shown]
    lines = _table([h for _, h in columns], rows)
    if len(shown) < len(run.rows):
        step = shown[1] - shown[0]
        lines += ["", f"One epoch in {step} of {len(run.rows)} shown, with the best and the last; metrics.csv has all."]
    return lines


def render_report(runs: Sequence[RunRecord], figures: Mapping[str, str], notes: Sequence[str] = ()) -> str:
    """The whole report.md; ``figures`` maps an image file name (relative to report.md) to its caption."""
    title = f"Training report: {runs[0].label}" if len(runs) == 1 else f"Training report: {len(runs)} runs"
    lines = [f"# {title}", ""]
    lines += comparison_table(runs)
    headline = headline_of(runs)
    names = [headline] + [metric_label(m) for m in other_metrics(runs)]
    labels = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else headline
    what = "Accuracies are test accuracies in percent" if headline == "accuracy" else f"Test {labels} in percent"
    gap = "" if headline == "accuracy" else f" {headline}"
    lines += [
        "",
        f"{what}; gap = dynamic teacher − student{gap} at the last epoch; "
        "training time is the sum of the epochs' times.",
        "",
        "## Figures",
        "",
    ]
    for name, caption in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    lines += [f"*{note}*\n" for note in notes]
    for run in runs:
        lines += [f"## {run.label}", "", f"Run directory: `{run.path.resolve()}`", ""]
        lines += epoch_table(run)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
