"""The accuracy benchmark's summary table: does GPD pay for its compute, scenario by scenario?

One row per (data set, scenario) of the plan: the plain student at equal epochs, at equal
training compute and at equal time (benchmarks/accuracy_matched.py), GPD, GPD's gain over each
(Δ, paired by seed), the cost ratio, and a sentence that says what the row shows. Every cell is
computed from finished runs; a run the plan has but that has not finished reads
"not measured yet", a run the plan does not have reads "not in this plan". Nothing is filled in
by hand.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

NOT_MEASURED = "not measured yet"
NOT_PLANNED = "not in this plan"
# scenario: (title, equal-epoch baseline slug, GPD slug); the matched runs are <baseline>_flops and <baseline>_time
SCENARIOS = {
    "scratch": ("ResNet-8 from scratch (CE alone vs GPD)", "scratch", "scratch_gpd"),
    "kd": ("ResNet-8, KD from the ResNet-20 (KD alone vs KD + GPD)", "kd", "kd_gpd"),
    "finetune": ("ResNet-8 fine-tuning (plain vs GPD, equally long)", "finetune", "finetune_gpd"),
    "vit": ("ViT-Ti from scratch (CE alone vs GPD)", "vit", "vit_gpd"),
    "vit_kd": ("ViT-Ti, KD from the ResNet-20 (KD alone vs KD + GPD)", "vit_kd", "vit_kd_gpd"),
    "seg": ("seg_resnet8 segmentation from scratch, test mIoU (CE alone vs GPD)", "seg", "seg_gpd"),
    "seg_cwd": (
        "seg_resnet8 segmentation, CWD from the seg_resnet20, test mIoU (CWD alone vs CWD + GPD)",
        "seg_cwd",
        "seg_cwd_gpd",
    ),
}
HEADER = [
    "| scenario | baseline, equal epochs | baseline, equal compute | baseline, equal time | GPD "
    "| Δ vs equal epochs | Δ vs equal compute | Δ vs equal time | cost of GPD (FLOPs; time) | does GPD pay for its compute? |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def paired_diffs(runs: Mapping[int, float], baseline: Mapping[int, float]) -> list[float]:
    """``run - baseline`` seed by seed, over the seeds both have."""
    return [runs[s] - baseline[s] for s in sorted(set(runs) & set(baseline))]


def fmt_delta(diffs: list[float]) -> str:
    if not diffs:
        return NOT_MEASURED
    if len(diffs) == 1:
        return f"{diffs[0]:+.2f} (1 seed)"
    return f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f}"


def fmt_accuracy(values: list[float], planned: int, epochs: int) -> str:
    if not values:
        return NOT_MEASURED
    text = f"{values[0]:.2f}" if len(values) == 1 else f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    seeds = "" if len(values) == planned else f", {len(values)} of {planned} seeds"
    return f"{text} ({epochs} ep{seeds})"


def verdict(compute: list[float], time: list[float], epochs: list[float], flop_ratio: float | None) -> str:
    """One sentence: whether GPD beats the plain student given the same compute (else the same time)."""
    for diffs, what in ((compute, "the same training FLOPs"), (time, "the same time")):
        if not diffs:
            continue
        text = fmt_delta(diffs)
        if len(diffs) < 2:
            return f"One seed only ({diffs[0]:+.2f} points against the plain student given {what}): no answer yet."
        mean, std = statistics.mean(diffs), statistics.stdev(diffs)
        if mean - std > 0:
            return f"Yes: GPD beats the plain student given {what} by {text} points."
        if mean + std < 0:
            return f"No: the plain student given {what} does better ({text} points for GPD)."
        return f"Not shown: against the plain student given {what}, GPD's {text} points are within the seed spread."
    if len(epochs) > 1 and statistics.mean(epochs) + statistics.stdev(epochs) < 0:
        return (f"No: GPD does worse than the plain student even at equal epochs ({fmt_delta(epochs)} points), "
                "where the plain student gets less compute.")  # fmt: skip
    if epochs:
        cost = f"{1 / flop_ratio:.2f} of" if flop_ratio else "less than"
        return (f"Unknown: only the equal-epoch baseline ran (Δ {fmt_delta(epochs)}), and it gets {cost} "
                "GPD's training compute.")  # fmt: skip
    return "Not measured yet."


def summary_table(
    datasets: list[str], specs: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], seeds: list[int],
    flop_ratios: Mapping[str, Mapping[str, float]], time_ratios: Mapping[str, Mapping[str, float]] | None = None,
) -> list[str]:  # fmt: skip
    """The table's lines: a row per (data set, scenario) with a planned run; empty if none.

    ``specs``: planned runs by id ("fashion_mnist/s0/scratch"), each with ``epochs``;
    ``results``: finished runs by id, each with ``last`` (last-epoch accuracy) and ``seconds``;
    ``flop_ratios``, ``time_ratios``: measured ratios per step by "data/scenario" (``ratio``)."""
    lines = list(HEADER)
    for data in datasets:
        for scenario in SCENARIOS:
            row = scenario_row(data, scenario, specs, results, seeds, flop_ratios, time_ratios or {})
            if row is not None:
                lines.append("| " + " | ".join(row) + " |")
    return lines if len(lines) > len(HEADER) else []


def scenario_row(
    data: str, scenario: str, specs: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]], seeds: list[int],
    flop_ratios: Mapping[str, Mapping[str, float]], time_ratios: Mapping[str, Mapping[str, float]] | None = None,
) -> list[str] | None:  # fmt: skip
    """The cells of one scenario's row on ``data`` (None if the plan has neither its baseline nor its GPD run)."""
    title, base, gpd = SCENARIOS[scenario]

    def planned(slug: str) -> list[str]:
        return [i for s in seeds if (i := f"{data}/s{s}/{slug}") in specs]

    def last(slug: str) -> dict[int, float]:
        return {s: results[i]["last"] for s in seeds if (i := f"{data}/s{s}/{slug}") in results}

    def cell(slug: str) -> str:
        ids = planned(slug)
        if not ids:
            return NOT_PLANNED
        return fmt_accuracy(list(last(slug).values()), len(ids), specs[ids[0]].epochs)

    def delta(slug: str) -> tuple[str, list[float]]:
        if not planned(slug) or not planned(gpd):
            return NOT_PLANNED, []
        diffs = paired_diffs(last(gpd), last(slug))
        return fmt_delta(diffs), diffs

    if not planned(base) and not planned(gpd):
        return None
    (d_epochs, epochs), (d_compute, compute), (d_time, time) = (delta(base), delta(f"{base}_flops"),
                                                                delta(f"{base}_time"))  # fmt: skip
    ratio = flop_ratios.get(f"{data}/{scenario}", {}).get("ratio")
    run_times = [
        results[g]["seconds"] / results[b]["seconds"]
        for s in seeds
        if (g := f"{data}/s{s}/{gpd}") in results and (b := f"{data}/s{s}/{base}") in results
    ]
    flops = (
        f"{ratio:.2f}x FLOPs per step"
        if ratio
        else f"FLOPs {NOT_MEASURED if planned(f'{base}_flops') else NOT_PLANNED}"
    )
    step_time = (time_ratios or {}).get(f"{data}/{scenario}", {}).get("ratio")
    seconds = f"{statistics.mean(run_times):.2f}x time" if run_times else f"time {NOT_MEASURED}"
    if step_time:
        seconds = f"{step_time:.2f}x step time side by side, {seconds} of the whole runs"
    return [f"{title}, {data}", cell(base), cell(f"{base}_flops"), cell(f"{base}_time"), cell(gpd), d_epochs,
            d_compute, d_time, f"{flops}; {seconds}", verdict(compute, time, epochs, ratio)]  # fmt: skip
