"""GPD's accuracy gain, measured over seeds: scratch, distillation, fine-tuning and ablations.

Drives ``gpd train`` (one subprocess per run, one run at a time) on Fashion-MNIST and on
scikit-learn's digits, reads each run's metrics.csv and writes a markdown summary:
mean +- std over seeds of the student's last-epoch and best-epoch test accuracy, per
group, the time of every run, and ``gpd report`` plots of one seed per group.

Groups (each run exists with and without GPD; GPD = dynamic teacher at r = 2, lambda = 3,
six-branch blocks, as in the paper and the bundled configs):

    scratch   CE alone vs GPD from scratch
    distill   a static teacher (ResNet-20, trained once per data set in the work dir),
              then KD, DKD and ReviewKD, each alone and with GPD
    finetune  from the scratch baseline's student (same seed): plain fine-tuning vs
              fine-tuning with GPD, equally long (same epochs, same steps)
    ablation  (Fashion-MNIST, scratch) branches on / off, ratio 1.5 / 2 / 3 (branches off:
              six-branch blocks need an integer ratio), sharing on / off (gpd.share=false),
              the r² step of sharing kept / removed (gpd.compensate_step), lambda (gpd.kd_weight) 1 / 3

    python benchmarks/accuracy.py --out bench/accuracy             # the full suite, 3 seeds
    python benchmarks/accuracy.py --out bench/quick --quick        # a few minutes: 1 seed, tiny subsets
    python benchmarks/accuracy.py --out bench/accuracy --resume    # continue: skips runs whose student.pt exists
    python benchmarks/accuracy.py --out DIR --only scratch,finetune --seeds 0 1 --data digits
    python benchmarks/accuracy.py --out bench/long --only scratch --data fashion_mnist --epochs 8

The summary goes to DIR/RESULTS.md (and is printed). Needs scikit-learn for the digits
(``pip install scikit-learn``) and Fashion-MNIST (``scripts/setup_data.sh``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

GROUPS = ("scratch", "distill", "finetune", "ablation")
DATASETS = ("fashion_mnist", "digits")
DEFAULT_SEEDS = (0, 1, 2)
BUDGET_S = 90 * 60  # the full suite must fit in this on the reference machine (2 cores, otherwise idle)


@dataclass(frozen=True)
class Plan:
    """Sizes of the runs on one data set (identical for every run of a group, baseline and GPD alike)."""

    train_subset: int | None  # None: the whole training split
    test_subset: int | None
    epochs: int  # scratch, distill and ablation runs
    finetune_epochs: int
    teacher_epochs: int
    batch_size: int = 128


@dataclass(frozen=True)
class Mode:
    plans: dict[str, Plan]
    seeds: tuple[int, ...]
    ablations: tuple[str, ...]  # which ablation variants run
    distill_methods: tuple[str, ...]
    ablation_data: tuple[str, ...] = ("fashion_mnist",)  # the data sets the ablations run on


ALL_ABLATIONS = ("no_branches", "ratio1.5", "ratio3", "unshared", "compensated", "lambda1")
METHODS = ("kd", "dkd", "reviewkd")

MODES = {
    # The suite: about 69 minutes on 2 idle cores (measured 2026-11-26; --estimate prints estimate_seconds()).
    "full": Mode(
        plans={
            "fashion_mnist": Plan(train_subset=12500, test_subset=None, epochs=2, finetune_epochs=1, teacher_epochs=3),
            "digits": Plan(train_subset=None, test_subset=None, epochs=10, finetune_epochs=5, teacher_epochs=15, batch_size=64),
        },
        seeds=DEFAULT_SEEDS,
        ablations=ALL_ABLATIONS,
        distill_methods=METHODS,
    ),
    # A few minutes: every scenario once, one seed, tiny subsets (numbers are not meaningful).
    "quick": Mode(
        plans={
            "fashion_mnist": Plan(train_subset=2000, test_subset=1000, epochs=1, finetune_epochs=1, teacher_epochs=2),
            "digits": Plan(train_subset=None, test_subset=None, epochs=3, finetune_epochs=1, teacher_epochs=4, batch_size=64),
        },
        seeds=(0,),
        ablations=ALL_ABLATIONS,
        distill_methods=METHODS,
    ),
    # For the smoke test only: the smallest runs that still exercise every code path.
    "tiny": Mode(
        plans={
            "fashion_mnist": Plan(train_subset=256, test_subset=128, epochs=1, finetune_epochs=1, teacher_epochs=1, batch_size=64),
            "digits": Plan(train_subset=128, test_subset=64, epochs=1, finetune_epochs=1, teacher_epochs=1, batch_size=64),
        },
        seeds=(0,),
        ablations=("unshared",),
        distill_methods=("kd",),
        ablation_data=DATASETS,
    ),
}

# Cost model of the estimate, in milliseconds per training image on the reference machine
# (2-core x86-64, idle), from the README's and docs/distillation.md's measured runs
# (ResNet-8 student, Fashion-MNIST 28 px, batch 128, a 10k-image test pass per 60k
# training images included): CE alone 88 s / 120k images, GPD 255 s, GPD with branches
# 285 s, DKD 115 s, DKD + GPD with branches 341 s. Ratio-3 and ratio-1.5 D scale with
# r^2; the ResNet-20 teacher is ~3 times the student. ReviewKD and ratio 3 were corrected
# after the first --quick run (2026-11-26: 27 runs in 5 min 27 s, estimate 4 min 32 s).
MS_PER_IMAGE = {
    "plain": 0.73,
    "static": 0.96,  # CE + KD/DKD from a static teacher (its forward pass)
    "static_review": 1.9,  # ReviewKD's fusion heads and feature taps: about twice KD (measured by --quick)
    "gpd": 2.4,  # with six-branch blocks, r = 2
    "gpd_plain_convs": 2.1,
    "gpd_static": 2.84,
    "gpd_static_review": 5.2,  # two fusion heads, one at D's widths
    "gpd_r1.5": 1.5,  # branches off
    "gpd_r3": 4.8,  # branches off
    "teacher": 2.2,
}
EVAL_FRACTION = 0.3  # a test image costs about this fraction of a training image (forward only)
PIXEL_SCALE = {"fashion_mnist": 1.0, "digits": 0.25}  # 8x8 images: overhead-bound, not 12x cheaper
STARTUP_S = 6.0  # python, torch, timm and gpd imports, model building and verification, per run


@dataclass
class Spec:
    """One ``gpd train`` run."""

    data: str
    group: str  # scratch | distill | finetune | ablation | teacher
    slug: str  # directory name, unique per data set and seed
    label: str  # row label in the tables
    config: str  # bundled config the run starts from
    overrides: list[str]
    seed: int | None  # None: the static teacher (one per data set)
    cost: str  # key of MS_PER_IMAGE
    gpd: bool
    needs: list[str] = field(default_factory=list)  # ids of runs that must finish first
    epochs: int = 0
    train_images: int = 0
    test_images: int = 0

    @property
    def id(self) -> str:
        return f"{self.data}/teacher" if self.seed is None else f"{self.data}/s{self.seed}/{self.slug}"


def split_sizes(data: str, plan: Plan) -> tuple[int, int]:
    """Training and test images per epoch of a run on ``data`` under ``plan``."""
    full = {"fashion_mnist": (60000, 10000), "digits": (1437, 360)}[data]
    train = full[0] if plan.train_subset is None else min(plan.train_subset, full[0])
    test = full[1] if plan.test_subset is None else min(plan.test_subset, full[1])
    return train, test


def build_specs(mode: Mode, datasets: list[str], groups: list[str], seeds: list[int], out: Path) -> list[Spec]:
    """Every run of the selected groups, plus the runs they depend on, in an order that respects dependencies."""
    specs: dict[str, Spec] = {}

    def add(spec: Spec) -> Spec:
        plan = mode.plans[spec.data]
        train, test = split_sizes(spec.data, plan)
        epochs = int(next(o.split("=", 1)[1] for o in spec.overrides if o.startswith("train.epochs=")))
        spec.epochs, spec.train_images, spec.test_images = epochs, train, test
        specs.setdefault(spec.id, spec)
        return specs[spec.id]

    for data in datasets:
        plan = mode.plans[data]
        common = [f"data.name={data}", f"train.batch_size={plan.batch_size}"]
        if plan.train_subset is not None:
            common.append(f"data.train_subset={plan.train_subset}")
        if plan.test_subset is not None:
            common.append(f"data.test_subset={plan.test_subset}")
        teacher_dir = out / "runs" / data / "teacher"

        def run(group: str, slug: str, label: str, config: str, extra: list[str], seed: int, cost: str,
                gpd: bool, needs: list[str] | None = None, epochs: int | None = None) -> Spec:  # fmt: skip
            overrides = [*common, f"train.epochs={epochs or plan.epochs}", f"train.seed={seed}", *extra]
            return add(Spec(data, group, slug, label, config, overrides, seed, cost, gpd, list(needs or [])))

        def teacher() -> Spec:
            # the bundled fashion_mnist/teacher (ResNet-20, CE alone), on this data set's plan
            overrides = [*common, f"train.epochs={plan.teacher_epochs}", "train.seed=0"]
            return add(Spec(data, "teacher", "teacher", "static teacher (resnet20)", "fashion_mnist/teacher",
                            overrides, None, "teacher", False))  # fmt: skip

        for seed in seeds:
            if "scratch" in groups or "finetune" in groups:  # the scratch baseline is fine-tuning's start
                scratch = run("scratch", "scratch", "scratch", "fashion_mnist/scratch", [], seed, "plain", False)
            if "scratch" in groups:
                run("scratch", "scratch_gpd", "scratch + GPD", "fashion_mnist/scratch_gpd", [], seed, "gpd", True)
            if "distill" in groups:
                t = teacher()
                at = [f"teacher.checkpoint={teacher_dir}"]
                for method in mode.distill_methods:
                    review = "_review" if method == "reviewkd" else ""
                    name = {"kd": "KD", "dkd": "DKD", "reviewkd": "ReviewKD"}[method]
                    # DKD's warm-up: the bundled 1 epoch, never longer than the run
                    warm = [f"dkd.warmup_epochs={min(1.0, plan.epochs / 2)}"] if method == "dkd" else []
                    run("distill", method, name, f"fashion_mnist/{method}", at + warm, seed, f"static{review}", False, [t.id])
                    run("distill", f"{method}_gpd", f"{name} + GPD", f"fashion_mnist/{method}_gpd", at + warm, seed,
                        f"gpd_static{review}", True, [t.id])  # fmt: skip
            if "finetune" in groups:
                start = [f"student.checkpoint={out / 'runs' / data / f's{seed}' / 'scratch'}"]
                ft = plan.finetune_epochs
                run("finetune", "finetune", "plain fine-tuning", "fashion_mnist/finetune", start, seed, "plain", False,
                    [scratch.id], epochs=ft)  # fmt: skip
                run("finetune", "finetune_gpd", "fine-tuning + GPD", "fashion_mnist/finetune_gpd", start, seed, "gpd",
                    True, [scratch.id], epochs=ft)  # fmt: skip
            if "ablation" in groups and data in mode.ablation_data:
                run("scratch", "scratch_gpd", "scratch + GPD", "fashion_mnist/scratch_gpd", [], seed, "gpd", True)
                variants = {
                    # six-branch blocks need an integer ratio, so the ratio rows compare with branches off
                    "ratio1.5": ("r = 1.5, branches off", ["gpd.ratio=1.5", "gpd.branches=none"], "gpd_r1.5"),
                    "ratio3": ("r = 3, branches off", ["gpd.ratio=3", "gpd.branches=none"], "gpd_r3"),
                    "no_branches": ("r = 2, branches off (plain 3x3 convs)", ["gpd.branches=none"], "gpd_plain_convs"),
                    "unshared": ("sharing off (gpd.share=false)", ["gpd.share=false"], "gpd"),
                    "compensated": ("r² step removed (gpd.compensate_step=true)", ["gpd.compensate_step=true"], "gpd"),
                    "lambda1": ("λ = 1", ["gpd.kd_weight=1"], "gpd"),
                }
                for key in mode.ablations:
                    label, extra, cost = variants[key]
                    run("ablation", f"ablation_{key}", label, "fashion_mnist/scratch_gpd", extra, seed, cost, True)
    ordered = sorted(specs.values(), key=lambda s: (DATASETS.index(s.data), s.seed is not None, s.seed or 0))
    return ordered


def estimate_seconds(spec: Spec) -> float:
    """The run's expected wall time on the reference machine (2 idle cores)."""
    ms = MS_PER_IMAGE[spec.cost] * PIXEL_SCALE[spec.data]
    images = spec.epochs * (spec.train_images + EVAL_FRACTION * spec.test_images * (2 if spec.gpd else 1))
    return STARTUP_S + ms * images / 1000


def fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else f"{seconds // 60} min {seconds % 60:02d} s"


# --- running ---------------------------------------------------------------------------------


def cores() -> int:
    """The cores this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def busy_cores(seconds: float = 0.5) -> float | None:
    """How many cores other processes keep busy right now (/proc/stat over ``seconds``; None if unknown).

    Sampled between runs, when this script itself is idle."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def threads(forced: int | None = None) -> int:
    """Intra-op threads of the next run: every core, less those other processes keep busy.

    One run at a time gets the whole machine when it is idle. When other work shares
    the cores, fewer threads avoid the collapse of OpenMP barriers whose threads are
    descheduled (measured here: 2 threads on 2 cores next to another busy process ran
    5-10x slower than on an idle machine)."""
    if forced is not None:
        return forced
    busy = busy_cores()
    free = cores() if busy is None else cores() - round(busy)
    return max(1, min(cores(), free))


def run_dir(out: Path, spec: Spec) -> Path:
    return out / "runs" / spec.id


def train(spec: Spec, out: Path, log: Path, n_threads: int) -> float:
    """Run ``gpd train`` for ``spec`` (restarting an unfinished run dir); returns its wall time."""
    target = run_dir(out, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "gpd", "train", spec.config, *spec.overrides, f"output_dir={target}"]
    if target.exists():
        cmd.append("--overwrite")  # an interrupted run: student.pt is missing, start it again
    n = str(n_threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n")
        handle.flush()
        result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"accuracy.py: {spec.id} failed (exit code {result.returncode}); see {log}")
    return seconds


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def accuracies(path: Path) -> dict[str, float | None]:
    """Last-epoch and best-epoch student accuracy, last-epoch D accuracy, training seconds."""
    rows = read_metrics(path)
    student = [float(r["student_acc"]) for r in rows]
    teacher = rows[-1].get("teacher_acc") or ""
    return {
        "last": student[-1],
        "best": max(student),
        "teacher": float(teacher) if teacher else None,
        "seconds": sum(float(r["seconds"]) for r in rows),
    }


# --- reporting ---------------------------------------------------------------------------------


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def paired_delta(runs: dict[int, float], baseline: dict[int, float]) -> str:
    """Mean ± std over seeds of ``run - baseline``, seed by seed.

    A seed fixes the initialisation, the data order and the subset for both runs, so the
    per-seed difference removes most of the seed-to-seed spread that the two separate
    means carry; only seeds present in both are paired.
    """
    seeds = sorted(set(runs) & set(baseline))
    if not seeds:
        return "—"
    diffs = [runs[s] - baseline[s] for s in seeds]
    if len(diffs) == 1:
        return f"{diffs[0]:+.2f}"
    return f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f}"


def baseline_of(slug: str) -> str | None:
    """The run a row's paired difference is taken against: the same scenario without GPD
    (the KD method alone, plain fine-tuning), and the scratch baseline for every ablation."""
    if slug.startswith("ablation_"):
        return "scratch"
    return slug.removesuffix("_gpd") if slug.endswith("_gpd") else None


TABLE_ROWS = {
    # group: rows as (spec slug, label override or None); the baselines come first
    "scratch": [("scratch", None), ("scratch_gpd", None)],
    "distill": [(m + suffix, None) for m in METHODS for suffix in ("", "_gpd")],
    "finetune": [("scratch", "pretrained start (the scratch baseline, no fine-tuning)"), ("finetune", None), ("finetune_gpd", None)],
    "ablation": [
        ("scratch_gpd", "GPD as in the other groups: r = 2, branches on, sharing on, λ = 3"),
        ("ablation_no_branches", None),
        ("ablation_ratio1.5", None),
        ("ablation_ratio3", None),
        ("ablation_unshared", None),
        ("ablation_compensated", None),
        ("ablation_lambda1", None),
    ],
}
GROUP_TITLES = {
    "scratch": "Scratch: CE alone vs GPD",
    "distill": "Distillation from a static teacher, each method alone and with GPD",
    "finetune": "Fine-tuning the scratch baseline's student: plain vs GPD, equally long",
    "ablation": "Ablations (scratch scenario)",
}


def group_table(group: str, data: str, specs: dict[str, Spec], results: dict[str, dict], seeds: list[int]) -> list[str]:
    if not any(s.group == group and s.data == data and s.id in results for s in specs.values()):
        return []  # e.g. the ablations, which run on Fashion-MNIST only
    lines = [
        "| run | student, last epoch (%) | student, best epoch (%) | D, last epoch (%) "
        "| Δ last vs no GPD, paired by seed (points) | seeds | time per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]

    def last_by_seed(slug: str) -> dict[int, float]:
        return {s: results[i]["last"] for s in seeds if (i := f"{data}/s{s}/{slug}") in results}

    for slug, label in TABLE_ROWS[group]:
        ids = [f"{data}/s{seed}/{slug}" for seed in seeds]
        done = [results[i] for i in ids if i in results]
        if not done:
            continue
        spec = specs[ids[0]]
        teacher = [r["teacher"] for r in done if r["teacher"] is not None]
        wall = [r["wall"] for r in done if r.get("wall") is not None]
        cells = [
            label or spec.label,
            mean_std([r["last"] for r in done]),
            mean_std([r["best"] for r in done]),
            mean_std(teacher) if teacher else "—",
            paired_delta(last_by_seed(slug), last_by_seed(base)) if (base := baseline_of(slug)) else "—",
            str(len(done)),
            f"{statistics.mean(wall):.0f}" if wall else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cores()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def write_summary(
    args: argparse.Namespace, mode_name: str, mode: Mode, specs: list[Spec], results: dict[str, dict], out: Path,
    started: dt.datetime, load_start: str, wall: float, reports: dict[str, Path], estimate: float,
) -> str:  # fmt: skip
    by_id = {s.id: s for s in specs}
    seeds = sorted({s.seed for s in specs if s.seed is not None})
    text = [
        f"# Accuracy benchmark ({mode_name} mode{f', --epochs {args.epochs}' if args.epochs else ''})",
        "",
        f"Command: `{' '.join(['python', 'benchmarks/accuracy.py', *sys.argv[1:]])}`  ",
        f"Machine: {machine()}  ",
        f"Started {started:%Y-%m-%d %H:%M} UTC; load average at the start {load_start}, at the end {load_average()}  ",
        f"Wall time {fmt_time(wall)} for the runs trained in this invocation; estimate before starting "
        f"{fmt_time(estimate)} (2 idle cores); all runs' wall times add up to "
        f"{fmt_time(sum(r['wall'] for r in results.values() if r.get('wall') is not None))}  ",
        f"Seeds: {', '.join(map(str, seeds))} (train.seed: initialisation, data order and, with a subset, which samples)",
        "",
        "Accuracy is top-1 on the test split, mean ± sample std over seeds. *Best epoch* picks the",
        "epoch with the highest test accuracy, so it is an optimistic (test-selected) number;",
        "*last epoch* is the honest one. D is the dynamic teacher. *Δ* is the GPD run's last-epoch",
        "accuracy minus that of the same scenario without GPD (scratch, the same KD method, plain",
        "fine-tuning; the ablations against the scratch baseline), taken seed by seed, then mean ± std:",
        "both runs of a seed share initialisation, data order and subset.",
        "",
    ]
    for data in [d for d in DATASETS if any(s.data == d for s in specs)]:
        plan = mode.plans[data]
        train_n, test_n = split_sizes(data, plan)
        text += [
            f"## {data}",
            "",
            f"{train_n} training images ({'all' if plan.train_subset is None else 'a seeded subset'}), {test_n} test images, "
            f"batch {plan.batch_size}; epochs: {plan.epochs} (fine-tuning {plan.finetune_epochs}, static teacher "
            f"{plan.teacher_epochs}); student resnet8, static teacher resnet20.",
            "",
        ]
        teacher = results.get(f"{data}/teacher")
        if teacher:
            text += [f"Static teacher (resnet20, CE, seed 0): {teacher['last']:.2f}% (last epoch).", ""]
        for group in GROUPS:
            table = group_table(group, data, by_id, results, seeds)
            if table:
                text += [f"### {GROUP_TITLES[group]}", "", *table, ""]
                key = f"{data}-{group}"
                if key in reports:
                    rel = os.path.relpath(reports[key], out)
                    text += [f"Plots of seed {seeds[0]}: [{rel}/report.md]({rel}/report.md), "
                             f"![accuracy]({rel}/accuracy.png)", ""]  # fmt: skip
    text += [
        "## Per-run times",
        "",
        "Wall time of the `gpd train` process (start-up included), the epochs' training and evaluation",
        "time from metrics.csv, the estimate for 2 idle cores, the threads the run was given",
        "(OMP_NUM_THREADS: the cores other processes left free) and the 1-minute load average at its end.",
        "",
        "| run | wall (s) | training + evaluation (s) | estimate (s) | threads | load at the end |",
        "|---|---|---|---|---|---|",
    ]
    for spec in specs:
        r = results.get(spec.id)
        if r:
            wall_s = f"{r['wall']:.0f}" if r.get("wall") is not None else "—"
            extra = f"{r['threads']} | {r['load']:.2f}" if "threads" in r else "— | —"
            text.append(f"| {spec.id} | {wall_s} | {r['seconds']:.0f} | {estimate_seconds(spec):.0f} | {extra} |")
    text.append("")
    return "\n".join(text)


def make_reports(specs: list[Spec], out: Path, log: Path) -> dict[str, Path]:
    """``gpd report`` of the first seed of each (data set, group): the rows of its table."""
    reports = {}
    for data in DATASETS:
        seeds = sorted({s.seed for s in specs if s.data == data and s.seed is not None})
        if not seeds:
            continue
        for group in GROUPS:
            dirs = [run_dir(out, s) for slug, _ in TABLE_ROWS[group] for s in specs
                    if s.data == data and s.seed == seeds[0] and s.slug == slug]  # fmt: skip
            dirs = list(dict.fromkeys(d for d in dirs if (d / "metrics.csv").is_file()))
            if not dirs or (group != "scratch" and all(d.name.startswith("scratch") for d in dirs)):
                continue
            target = out / "reports" / f"{data}-{group}"
            cmd = [sys.executable, "-m", "gpd", "report", *map(str, dirs), "--output", str(target), "--overwrite"]
            with open(log, "a") as handle:
                handle.write(f"\n$ {' '.join(cmd)}\n")
                handle.flush()
                if subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT).returncode == 0:
                    reports[f"{data}-{group}"] = target
    return reports


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", required=True, type=Path, help="work directory (runs, reports, RESULTS.md)")
    parser.add_argument("--quick", action="store_true", help="a few minutes: 1 seed, tiny subsets, every scenario once")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test's even smaller mode
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="train.seed values (default 0 1 2; --quick: 0)")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups: {', '.join(GROUPS)} (default all)")
    parser.add_argument("--data", default=",".join(DATASETS), help=f"comma-separated data sets: {', '.join(DATASETS)}")
    parser.add_argument("--resume", action="store_true", help="reuse --out: skip runs whose student.pt exists")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every run (default: the cores other processes leave free, sampled before each run)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the scratch, distillation and ablation runs instead of the mode's "
                             "(fine-tuning and the static teacher keep theirs); use a new --out for it")
    parser.add_argument("--estimate", action="store_true", help="print the plan and its time estimate, run nothing")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    for value, known, what in ((args.only, GROUPS, "--only"), (args.data, DATASETS, "--data")):
        bad = [v for v in value.split(",") if v not in known]
        if bad:
            parser.error(f"{what}: unknown {', '.join(bad)}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    if args.epochs is not None:
        mode = replace(mode, plans={d: replace(p, epochs=args.epochs) for d, p in mode.plans.items()})
    seeds = list(args.seeds if args.seeds is not None else mode.seeds)
    out: Path = args.out.resolve()
    specs = build_specs(mode, args.data.split(","), args.only.split(","), seeds, out)
    estimate = sum(estimate_seconds(s) for s in specs)
    print(f"{len(specs)} runs ({mode_name} mode, seeds {' '.join(map(str, seeds))}); estimated {fmt_time(estimate)} "
          f"on 2 idle cores, one run at a time", flush=True)  # fmt: skip
    if mode_name == "full" and args.epochs is None and estimate > BUDGET_S:
        print(f"note: the estimate exceeds the {BUDGET_S // 60}-minute budget of the full suite", flush=True)
    if args.estimate:
        for spec in specs:
            print(f"  {spec.id:45s} {estimate_seconds(spec):6.0f} s")
        return 0
    if out.exists() and any(out.iterdir()) and not args.resume:
        print(f"accuracy.py: {out} exists and is not empty; pass --resume to continue it (finished runs are skipped) "
              "or choose another --out", file=sys.stderr)  # fmt: skip
        return 2
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train.log"
    ledger_path = out / "times.json"
    ledger: dict[str, dict] = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    started, load_start, clock = dt.datetime.now(dt.timezone.utc), load_average(), time.perf_counter()
    results: dict[str, dict] = {}
    remaining = estimate
    for index, spec in enumerate(specs, 1):
        target = run_dir(out, spec)
        remaining -= estimate_seconds(spec)
        if (target / "student.pt").is_file():
            print(f"[{index}/{len(specs)}] {spec.id}: finished earlier, skipped", flush=True)
        else:
            n_threads = threads(args.threads)
            print(f"[{index}/{len(specs)}] {spec.id} ({n_threads} threads) ...", end=" ", flush=True)
            seconds = train(spec, out, log, n_threads)
            ledger[spec.id] = {"wall": seconds, "threads": n_threads, "load": os.getloadavg()[0]}
            ledger_path.write_text(json.dumps(ledger, indent=1))
            elapsed = time.perf_counter() - clock
            print(f"{seconds:.0f} s (estimate {estimate_seconds(spec):.0f} s); elapsed {fmt_time(elapsed)}, "
                  f"left about {fmt_time(remaining)} by the estimate", flush=True)  # fmt: skip
        results[spec.id] = {**accuracies(target), **ledger.get(spec.id, {})}
        r = results[spec.id]
        print(f"    student {r['last']:.2f}% (best {r['best']:.2f}%)"
              + (f", D {r['teacher']:.2f}%" if r["teacher"] is not None else ""), flush=True)  # fmt: skip
    wall = time.perf_counter() - clock
    reports = make_reports(specs, out, log)
    summary = write_summary(args, mode_name, mode, specs, results, out, started, load_start, wall, reports, estimate)
    (out / "RESULTS.md").write_text(summary)
    print(summary)
    print(f"wrote {out / 'RESULTS.md'}; total wall time {fmt_time(wall)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
