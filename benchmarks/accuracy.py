"""GPD's accuracy gain, measured over seeds: scratch, distillation, fine-tuning, cost-matched baselines, a ViT, ablations.

Drives ``gpd train`` (one subprocess per run, one run at a time) on Fashion-MNIST and on
scikit-learn's digits, reads each run's metrics.csv and writes a markdown summary:
mean +- std over seeds of the student's last-epoch and best-epoch test accuracy, per
group, the dynamic teacher's accuracy and gap, the time of every run, the runs still
missing, and ``gpd report`` plots of one seed per group.

Groups (each run exists with and without GPD; GPD = dynamic teacher at r = 2, lambda = 3,
six-branch blocks, as in the paper and the bundled configs):

    scratch   CE alone vs GPD from scratch
    distill   a static teacher (ResNet-20, trained once per data set in the work dir),
              then KD, DKD and ReviewKD, each alone and with GPD
    finetune  from the scratch baseline's student (same seed): plain fine-tuning vs
              fine-tuning with GPD, equally long (same epochs, same steps)
    matched   the scratch and KD baselines given GPD's training compute (epochs x the measured ratio
              of training FLOPs per step, benchmarks/step_flops.py) and GPD's time on this machine
              (epochs x the ratio of seconds per training step, both steps timed side by side when
              the suite starts, benchmarks/step_times.py), next to the equal-epoch runs
              (benchmarks/accuracy_matched.py explains the choices)
    vit       (Fashion-MNIST) a transformer student, timm's ViT-Ti with 7 px patches and its usual
              recipe (AdamW, warm-up + cosine, label smoothing; the paper's per-layer steps under
              Adam): CE alone, GPD, KD from the ResNet-20 teacher, KD + GPD (fashion_mnist/vit*)
    ablation  (Fashion-MNIST, scratch) branches on / off, ratio 1.5 / 2 / 3 (branches off:
              six-branch blocks need an integer ratio), sharing on / off (gpd.share=false),
              the r² step of sharing kept / removed (gpd.step_rule), lambda (gpd.sce_weight) 1 / 3
    early     (--early only) the bundled demo config for one epoch of 2000 images (15 steps of 128),
              with and without GPD

Modes (one of them; the default is the full suite):

    (default) Fashion-MNIST on a 12.5k-image subset, 2 epochs, every group, 3 seeds (~3 h by the
              cost model: the ViT group alone ~1 h 20 min)
    --quick   about 8 minutes on 2 idle cores: every scenario once, one seed, small subsets
    --long    the whole Fashion-MNIST training and test sets plus the digits, 3 seeds; scratch,
              distill (KD only) and finetune (half the epochs, rounded up), each with and
              without GPD; --only may add matched and vit; the Fashion-MNIST epochs are the
              most whose whole suite fits --budget-min (default 90) by the cost model below;
              run it in the background and continue it with --resume
    --early   the early-training re-measure: the 15-step demo run with and without GPD
              (seed 0) and the default suite's scratch group (12.5k images, 2 epochs, 3 seeds),
              with the student's first-epoch CE

    python benchmarks/accuracy.py --out bench/accuracy             # the full suite, 3 seeds
    python benchmarks/accuracy.py --out bench/quick --quick        # a few minutes: 1 seed, tiny subsets
    python benchmarks/accuracy.py --out bench/accuracy --resume    # continue: skips runs whose student.pt exists
    python benchmarks/accuracy.py --out DIR --only scratch,finetune --seeds 0 1 --data digits
    python benchmarks/accuracy.py --out bench/long --only scratch --data fashion_mnist --epochs 8
    python benchmarks/accuracy.py --out bench/long --long --estimate          # the chosen epochs and the plan
    nohup python benchmarks/accuracy.py --out bench/long --long --resume > bench-long.log 2>&1 &
    python benchmarks/accuracy.py --out bench/long --long --summary           # RESULTS.md of what has finished
    python benchmarks/accuracy.py --out bench/m --long --only scratch,distill,matched --budget-min 180
    python benchmarks/accuracy.py --out bench/vit --only vit --data fashion_mnist   # the ViT group alone
    python benchmarks/accuracy.py --out bench/early --early
    python benchmarks/accuracy.py --out bench/accuracy --early --resume --results RESULTS-early.md  # reuse a full suite's scratch runs

With --resume, a run whose student.pt exists is skipped, and an interrupted one continues
from its checkpoint (``gpd train --resume``) or, without one, starts again. RESULTS.md is
rewritten after every run, so an interrupted suite leaves a truthful partial summary that
lists the missing runs. RESULTS.md opens with the summary table (benchmarks/accuracy_summary.py):
one row per scenario, the baseline at equal epochs, compute and time, GPD, Δ paired by seed,
the cost ratio and a sentence per row; cells of runs not finished read "not measured yet".
Needs scikit-learn for the digits (``pip install scikit-learn``)
and Fashion-MNIST (``scripts/setup_data.sh``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's own modules, however it is loaded
from accuracy_matched import (
    FLOP_RATIOS_FILE,
    KINDS,
    MATCHED_SCENARIOS,
    TIME_RATIOS_FILE,
    FlopRatios,
    TimeRatios,
    config_warmup,
    matched_epochs,
    matched_overrides,
)
from accuracy_summary import summary_table

GROUPS = ("early", "scratch", "distill", "finetune", "matched", "vit", "segmentation", "ablation")  # the tables' order
DATASETS = ("fashion_mnist", "digits", "fashion_mnist_seg")
# fashion_mnist_seg (garments on a canvas, per-pixel labels) hosts the segmentation group alone, and that group
# runs on it alone: its runs are the bundled fashion_mnist_seg/* configs, scored by mean IoU
SEGMENTATION_DATA = "fashion_mnist_seg"
DEFAULT_SEEDS = (0, 1, 2)
BUDGET_MIN = 90  # the long suite must fit in this on the reference machine (2 cores, otherwise idle)
# The full suite: 80 runs in 65 minutes, then the matched group (25 min by the cost model) and the
# ViT group (1 h 18 min: ViT-Ti's D is a ViT-S, 47 times the ResNet-8 student's step) came.
FULL_BUDGET_MIN = 210
LONG_MAX_EPOCHS = 100  # the --long sizing stops here whatever the budget


@dataclass(frozen=True)
class Plan:
    """Sizes of the runs on one data set (identical for every run of a group, baseline and GPD alike)."""

    train_subset: int | None  # None: the whole training split
    test_subset: int | None
    epochs: int  # scratch, distill and ablation runs
    finetune_epochs: int
    teacher_epochs: int
    batch_size: int = 128


ALL_GROUPS = ("scratch", "distill", "finetune", "matched", "vit", "segmentation", "ablation")


@dataclass(frozen=True)
class Mode:
    plans: dict[str, Plan]
    seeds: tuple[int, ...]
    ablations: tuple[str, ...]  # which ablation variants run
    distill_methods: tuple[str, ...]
    ablation_data: tuple[str, ...] = ("fashion_mnist",)  # the data sets the ablations run on
    groups: tuple[str, ...] = ALL_GROUPS  # the groups the mode runs
    datasets: tuple[str, ...] = DATASETS
    group_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # a group's seeds instead of ``seeds``
    early_plan: Plan | None = None  # the early group's runs (Fashion-MNIST, the demo config)
    show_ce: bool = False  # a column with the student's first-epoch CE
    vit_data: tuple[str, ...] = ("fashion_mnist",)  # the data sets the ViT group runs on
    optional_groups: tuple[str, ...] = ()  # groups --only may add to the mode's
    budget_min: float | None = None  # the estimate of the mode's whole suite should fit this (None: no check)


STUDENTS = {"fashion_mnist": "resnet8", "digits": "resnet8", SEGMENTATION_DATA: "seg_resnet8"}
TEACHERS = {"fashion_mnist": "resnet20", "digits": "resnet20", SEGMENTATION_DATA: "seg_resnet20"}
ALL_ABLATIONS = ("no_branches", "ratio1.5", "ratio3", "unshared", "compensated", "lambda1")
METHODS = ("kd", "dkd", "reviewkd")
FULL_PLANS = {
    "fashion_mnist": Plan(train_subset=12500, test_subset=None, epochs=2, finetune_epochs=1, teacher_epochs=3),
    "digits": Plan(train_subset=None, test_subset=None, epochs=10, finetune_epochs=5, teacher_epochs=15, batch_size=64),
    # the bundled fashion_mnist_seg/demo's sizes: 2000 and 500 canvases of 40x40, 8 epochs of batch 32
    SEGMENTATION_DATA: Plan(
        train_subset=2000, test_subset=500, epochs=8, finetune_epochs=1, teacher_epochs=8, batch_size=32
    ),
}
TINY_PLANS = {
    "fashion_mnist": Plan(
        train_subset=256, test_subset=128, epochs=1, finetune_epochs=1, teacher_epochs=1, batch_size=64
    ),
    "digits": Plan(train_subset=128, test_subset=64, epochs=1, finetune_epochs=1, teacher_epochs=1, batch_size=64),
    SEGMENTATION_DATA: Plan(
        train_subset=32, test_subset=16, epochs=1, finetune_epochs=1, teacher_epochs=1, batch_size=16
    ),
}
# The early group: `gpd train data.train_subset=2000 train.epochs=1`, i.e. the bundled demo
# for 2000 // 128 = 15 steps (gpd train drops the last partial batch), evaluated on the whole test split.
EARLY_PLAN = Plan(train_subset=2000, test_subset=None, epochs=1, finetune_epochs=1, teacher_epochs=1)

MODES = {
    # The suite: 80 runs took 65 minutes on 2 idle cores (2026-11-26) before the matched and ViT groups came;
    # --estimate prints the whole plan's estimate_seconds().
    "full": Mode(
        plans=FULL_PLANS,
        seeds=DEFAULT_SEEDS,
        ablations=ALL_ABLATIONS,
        distill_methods=METHODS,
        budget_min=FULL_BUDGET_MIN,
    ),
    # A few minutes: every scenario once, one seed, tiny subsets (numbers are not meaningful).
    "quick": Mode(
        plans={
            "fashion_mnist": Plan(train_subset=2000, test_subset=1000, epochs=1, finetune_epochs=1, teacher_epochs=2),
            "digits": Plan(
                train_subset=None, test_subset=None, epochs=3, finetune_epochs=1, teacher_epochs=4, batch_size=64
            ),
            SEGMENTATION_DATA: Plan(
                train_subset=256, test_subset=128, epochs=1, finetune_epochs=1, teacher_epochs=1, batch_size=32
            ),
        },
        seeds=(0,),
        ablations=ALL_ABLATIONS,
        distill_methods=METHODS,
    ),
    # For the smoke test only: the smallest runs that still exercise every code path.
    "tiny": Mode(
        plans=TINY_PLANS, seeds=(0,), ablations=("unshared",), distill_methods=("kd",), ablation_data=DATASETS
    ),
    # The early-training re-measure: the 15-step demo run (seed 0) and the full suite's scratch group.
    "early": Mode(
        plans={"fashion_mnist": FULL_PLANS["fashion_mnist"]},
        seeds=DEFAULT_SEEDS,
        ablations=(),
        distill_methods=(),
        ablation_data=(),
        groups=("early", "scratch"),
        datasets=("fashion_mnist",),
        group_seeds={"early": (0,)},
        early_plan=EARLY_PLAN,
        show_ce=True,
    ),
}
# --early --tiny, for the smoke test: the same runs on tiny subsets
MODES["early-tiny"] = replace(
    MODES["early"],
    plans={"fashion_mnist": TINY_PLANS["fashion_mnist"]},
    seeds=(0,),
    early_plan=Plan(train_subset=256, test_subset=128, epochs=1, finetune_epochs=1, teacher_epochs=1),
)


LONG_GROUPS = ("scratch", "distill", "finetune")


def long_mode(epochs: int, groups: tuple[str, ...] = LONG_GROUPS) -> Mode:
    """--long with ``epochs`` Fashion-MNIST epochs: the whole training and test sets, 3 seeds,
    scratch, KD (alone and with GPD) and fine-tuning; no ablations, no DKD or ReviewKD; the
    matched and ViT groups on request (``groups``, from --only).

    Fine-tuning lasts half as long as training from scratch (rounded up), as the paper's
    fine-tuning runs, and the static teacher 1.5 times as long; the digits keep the full
    suite's plan (tiny: more epochs cost almost nothing)."""
    fashion = Plan(train_subset=None, test_subset=None, epochs=epochs, finetune_epochs=(epochs + 1) // 2,
                   teacher_epochs=epochs + epochs // 2)  # fmt: skip
    return Mode(
        plans={"fashion_mnist": fashion, "digits": FULL_PLANS["digits"]},
        seeds=DEFAULT_SEEDS,
        ablations=(),
        distill_methods=("kd",),
        ablation_data=(),
        groups=groups,
        optional_groups=tuple(g for g in ("matched", "vit") if g not in groups),
        datasets=("fashion_mnist", "digits"),
    )


# Cost model of the estimate. MS_PER_IMAGE holds the relative costs of the runs, in milliseconds
# per training image on the reference machine (2-core x86-64, idle), from the README's and
# docs/distillation.md's measured runs (ResNet-8 student, Fashion-MNIST 28 px, batch 128, a
# 10k-image test pass per 60k training images included): CE alone 88 s / 120k images, GPD 255 s,
# GPD with branches 285 s, DKD 115 s, DKD + GPD with branches 341 s. Ratio-3 and ratio-1.5 D scale
# with r^2; the ResNet-20 teacher is ~3 times the student. ReviewKD and ratio 3 were corrected
# after the first --quick run (2026-11-26: 27 runs in 5 min 27 s, estimate 4 min 32 s).
# The ViT-Ti entries (7 px patches, 28 px) are the CPU time of one training step of 128 images
# on one thread relative to the plain ResNet-8's (2026-12-07: 10.0x alone, 47.4x with GPD),
# not yet a measured run.
#
# Recalibrated 2026-12-07 on the suites recorded in docs/RESULTS.md, both on commit 31c35d3: the
# --long suite took 49 min 45 s where the model said 1 h 08 min (its KD runs 75-89 s against
# 127 s), the --early suite 7 min 08 s (the model: 6 min 43 s). The old model charged every
# training image alike and the test pass 0.3 of a training image; a least-squares fit of the
# two totals and the KD runs gives a training image CALIBRATION = 0.58 of the table's cost and a
# test image EVAL_FRACTION = 1.1 of a training image's table cost (per evaluated network pair
# for GPD: the student and D): the test pass of 10k images costs about as much on a 12.5k-image
# subset as on the whole 60k set. The fitted model: --long 48 min 53 s, --early 7 min 11 s,
# KD at 60k images 85 s.
CALIBRATION = 0.58
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
    "vit": 7.3,  # ViT-Ti, CE alone
    "vit_static": 7.5,  # ViT-Ti, KD from the ResNet-20 (its forward pass)
    "vit_gpd": 34.6,  # ViT-Ti + GPD, r = 2
    "vit_gpd_static": 34.9,
    # seg_resnet8 on 40x40 canvases, batch 32 (2026-12-07: 330 img/s alone, 130 img/s with GPD, one thread
    # of a busy machine); CWD adds the seg_resnet20 teacher's forward pass; the teacher trains 3x the student
    "seg": 3.8,
    "seg_static": 6.0,
    "seg_gpd": 8.6,
    "seg_gpd_static": 11.0,
    "seg_teacher": 10.0,
}
EVAL_FRACTION = 1.1  # a test image's cost, in training images of the run's table cost (see CALIBRATION)
# The ViT's test pass is compute-bound, unlike the tiny ResNet-8's: a test image costs the forward
# pass of the student (and D), about a third of a training image's table cost.
EVAL_MS_PER_IMAGE = {"vit": 7.3 / 3, "vit_static": 7.3 / 3, "vit_gpd": 34.6 / 3, "vit_gpd_static": 34.6 / 3}
PIXEL_SCALE = {
    "fashion_mnist": 1.0,
    "digits": 0.25,
    SEGMENTATION_DATA: 1.0,
}  # segmentation: its own costs  # 8x8 images: overhead-bound, not 12x cheaper
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
    matched: str | None = None  # a cost-matched baseline: "flops" (equal compute) or "time" (equal time)
    pair: tuple[str, str] = ("", "")  # a matched run's GPD run and equal-epoch baseline (ids)
    ratio: float | None = None  # its cost ratio: the measured FLOP ratio, or the GPD run's time / the baseline's
    resolved: bool = True  # False: a time-matched run whose epochs are the cost model's estimate (not timed yet)

    @property
    def id(self) -> str:
        return f"{self.data}/teacher" if self.seed is None else f"{self.data}/s{self.seed}/{self.slug}"


def split_sizes(data: str, plan: Plan) -> tuple[int, int]:
    """Training and test images per epoch of a run on ``data`` under ``plan``."""
    full = {"fashion_mnist": (60000, 10000), "digits": (1437, 360), SEGMENTATION_DATA: (10000, 2000)}[data]
    train = full[0] if plan.train_subset is None else min(plan.train_subset, full[0])
    test = full[1] if plan.test_subset is None else min(plan.test_subset, full[1])
    return train, test


def seeds_by_group(mode: Mode, forced: list[int] | None = None) -> dict[str, list[int]]:
    """Each group's seeds: ``forced`` (--seeds) for every group, else the mode's."""
    return {g: list(forced) if forced is not None else list(mode.group_seeds.get(g, mode.seeds)) for g in GROUPS}


def build_specs(
    mode: Mode, datasets: list[str], groups: list[str], seeds: list[int] | dict[str, list[int]], out: Path,
    flop_ratios: FlopRatios | None = None, time_ratios: TimeRatios | None = None,
) -> list[Spec]:  # fmt: skip
    """Every run of the selected groups, plus the runs they depend on, in an order that respects dependencies.

    ``seeds``: the same for every group, or per group (``seeds_by_group``). ``flop_ratios``: where
    the matched group's FLOP ratios come from (default: measured now, kept nowhere);
    ``time_ratios``: its step-time ratios (None: the cost model's estimate, for a plan not run yet)."""
    ratios = flop_ratios if flop_ratios is not None else FlopRatios(None)
    if not isinstance(seeds, dict):
        seeds = {g: list(seeds) for g in GROUPS}
    specs: dict[str, Spec] = {}

    def add(spec: Spec, plan: Plan | None = None) -> Spec:
        train, test = split_sizes(spec.data, plan or mode.plans[spec.data])
        epochs = int(next(o.split("=", 1)[1] for o in spec.overrides if o.startswith("train.epochs=")))
        spec.epochs, spec.train_images, spec.test_images = epochs, train, test
        specs.setdefault(spec.id, spec)
        return specs[spec.id]

    all_seeds = sorted({seed for g in groups for seed in seeds.get(g, [])})
    for data in [d for d in datasets if d in mode.plans]:
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
            # the bundled fashion_mnist/teacher (ResNet-20, CE alone), on this data set's plan; segmentation's own
            overrides = [*common, f"train.epochs={plan.teacher_epochs}", "train.seed=0"]
            seg = data == SEGMENTATION_DATA
            return add(Spec(data, "teacher", "teacher", f"static teacher ({TEACHERS[data]})",
                            f"{data}/teacher" if seg else "fashion_mnist/teacher", overrides, None,
                            "seg_teacher" if seg else "teacher", False))  # fmt: skip

        for seed in all_seeds:

            def on(group: str) -> bool:
                on_its_data = (group == "segmentation") == (data == SEGMENTATION_DATA)
                return on_its_data and group in groups and seed in seeds.get(group, [])

            if on("early") and data == "fashion_mnist" and mode.early_plan is not None:
                # exactly `gpd train data.train_subset=N train.epochs=E` (the demo), with and without GPD
                ep = mode.early_plan
                extra = [f"data.train_subset={ep.train_subset}", f"train.epochs={ep.epochs}", f"train.seed={seed}"]
                if ep.test_subset is not None:
                    extra.append(f"data.test_subset={ep.test_subset}")
                steps = ep.epochs * (
                    split_sizes(data, ep)[0] // ep.batch_size
                )  # gpd train drops the last partial batch
                add(Spec(data, "early", "early", f"{steps} steps, CE alone (gpd.enabled=false)", "fashion_mnist/demo",
                         [*extra, "gpd.enabled=false"], seed, "plain", False), ep)  # fmt: skip
                add(Spec(data, "early", "early_gpd", f"{steps} steps, GPD (the demo: r = 2, λ = 3, no branch blocks)",
                         "fashion_mnist/demo", extra, seed, "gpd_plain_convs", True), ep)  # fmt: skip

            def scratch_run() -> Spec:
                return run("scratch", "scratch", "scratch", "fashion_mnist/scratch", [], seed, "plain", False)

            if on("scratch") or on("finetune"):  # the scratch baseline is fine-tuning's start
                scratch = scratch_run()
            if on("scratch"):
                run("scratch", "scratch_gpd", "scratch + GPD", "fashion_mnist/scratch_gpd", [], seed, "gpd", True)
            if on("distill"):
                t = teacher()
                at = [f"teacher.checkpoint={teacher_dir}"]
                for method in mode.distill_methods:
                    review = "_review" if method == "reviewkd" else ""
                    name = {"kd": "KD", "dkd": "DKD", "reviewkd": "ReviewKD"}[method]
                    # DKD's warm-up: the bundled 1 epoch, never longer than the run
                    warm = [f"dkd.warmup_epochs={min(1.0, plan.epochs / 2)}"] if method == "dkd" else []
                    run(
                        "distill",
                        method,
                        name,
                        f"fashion_mnist/{method}",
                        at + warm,
                        seed,
                        f"static{review}",
                        False,
                        [t.id],
                    )
                    run("distill", f"{method}_gpd", f"{name} + GPD", f"fashion_mnist/{method}_gpd", at + warm, seed,
                        f"gpd_static{review}", True, [t.id])  # fmt: skip
            if on("finetune"):
                start = [f"student.checkpoint={out / 'runs' / data / f's{seed}' / 'scratch'}"]
                ft = plan.finetune_epochs
                run("finetune", "finetune", "plain fine-tuning", "fashion_mnist/finetune", start, seed, "plain", False,
                    [scratch.id], epochs=ft)  # fmt: skip
                run("finetune", "finetune_gpd", "fine-tuning + GPD", "fashion_mnist/finetune_gpd", start, seed, "gpd",
                    True, [scratch.id], epochs=ft)  # fmt: skip
            if on("matched"):
                pairs = {
                    "scratch": (
                        scratch_run(),
                        run(
                            "scratch",
                            "scratch_gpd",
                            "scratch + GPD",
                            "fashion_mnist/scratch_gpd",
                            [],
                            seed,
                            "gpd",
                            True,
                        ),
                    )
                }
                t = teacher()
                at = [f"teacher.checkpoint={teacher_dir}"]
                pairs["kd"] = (run("distill", "kd", "KD", "fashion_mnist/kd", at, seed, "static", False, [t.id]),
                               run("distill", "kd_gpd", "KD + GPD", "fashion_mnist/kd_gpd", at, seed, "gpd_static",
                                   True, [t.id]))  # fmt: skip
                for scenario, (plain, gpd) in pairs.items():
                    key, runs = f"{data}/{scenario}", ((gpd.config, gpd.overrides), (plain.config, plain.overrides))
                    time_ratio = time_ratios.ratio(key, *runs) if time_ratios is not None else None
                    for spec in matched_specs(plain, gpd, ratios.ratio(key, *runs), time_ratio):
                        add(spec)
            if on("vit") and data in mode.vit_data:
                run("vit", "vit", "ViT-Ti, CE alone", "fashion_mnist/vit", [], seed, "vit", False)
                run("vit", "vit_gpd", "ViT-Ti + GPD", "fashion_mnist/vit_gpd", [], seed, "vit_gpd", True)
                t = teacher()
                at = [f"teacher.checkpoint={teacher_dir}"]
                run("vit", "vit_kd", "ViT-Ti, KD from the ResNet-20", "fashion_mnist/vit_kd", at, seed,
                    "vit_static", False, [t.id])  # fmt: skip
                run("vit", "vit_kd_gpd", "ViT-Ti, KD + GPD", "fashion_mnist/vit_kd_gpd", at, seed,
                    "vit_gpd_static", True, [t.id])  # fmt: skip
            if on("segmentation"):
                run("segmentation", "seg", "seg_resnet8, CE alone (fashion_mnist_seg/scratch)", f"{data}/scratch", [],
                    seed, "seg", False)  # fmt: skip
                run("segmentation", "seg_gpd", "seg_resnet8 + GPD (fashion_mnist_seg/demo)", f"{data}/demo", [], seed,
                    "seg_gpd", True)  # fmt: skip
                t = teacher()
                at = [f"teacher.checkpoint={teacher_dir}"]
                run("segmentation", "seg_cwd", "CWD from the seg_resnet20 alone", f"{data}/kd_gpd",
                    [*at, "gpd.enabled=false"], seed, "seg_static", False, [t.id])  # fmt: skip
                run("segmentation", "seg_cwd_gpd", "CWD + GPD (fashion_mnist_seg/kd_gpd)", f"{data}/kd_gpd", at, seed,
                    "seg_gpd_static", True, [t.id])  # fmt: skip
            if on("ablation") and data in mode.ablation_data:
                run("scratch", "scratch_gpd", "scratch + GPD", "fashion_mnist/scratch_gpd", [], seed, "gpd", True)
                variants = {
                    # six-branch blocks need an integer ratio, so the ratio rows compare with branches off
                    "ratio1.5": ("r = 1.5, branches off", ["gpd.ratio=1.5", "gpd.branches=none"], "gpd_r1.5"),
                    "ratio3": ("r = 3, branches off", ["gpd.ratio=3", "gpd.branches=none"], "gpd_r3"),
                    "no_branches": ("r = 2, branches off (plain 3x3 convs)", ["gpd.branches=none"], "gpd_plain_convs"),
                    "unshared": ("sharing off (gpd.share=false)", ["gpd.share=false"], "gpd"),
                    "compensated": ("r² step removed (gpd.step_rule=plain)", ["gpd.step_rule=plain"], "gpd"),
                    "lambda1": ("λ = 1", ["gpd.sce_weight=1"], "gpd"),
                }
                for key in mode.ablations:
                    label, extra, cost = variants[key]
                    run("ablation", f"ablation_{key}", label, "fashion_mnist/scratch_gpd", extra, seed, cost, True)
    ordered = sorted(specs.values(), key=lambda s: (DATASETS.index(s.data), s.seed is not None, s.seed or 0))
    return ordered


def matched_specs(plain: Spec, gpd: Spec, flop_ratio: float, time_ratio: float | None = None) -> list[Spec]:
    """The equal-compute and equal-time baselines of ``plain`` (the equal-epoch baseline) against ``gpd``.

    ``time_ratio``: seconds per training step, GPD / plain, timed side by side (None: the cost
    model's estimate, for a plan that has not been run; the run measures it first)."""
    warmup = config_warmup(plain.config)
    per_epoch = (estimate_seconds(plain) - STARTUP_S) / plain.epochs
    estimated_time_ratio = (estimate_seconds(gpd) - STARTUP_S) / (per_epoch * plain.epochs)
    specs = []
    for kind, ratio in (("flops", flop_ratio), ("time", time_ratio or estimated_time_ratio)):
        epochs = matched_epochs(plain.epochs, ratio)
        spec = replace(plain, group="matched", slug=f"{plain.slug}_{kind}", label=matched_label(plain, kind, epochs),
                       overrides=matched_overrides(plain.overrides, epochs, plain.epochs, warmup), matched=kind,
                       pair=(gpd.id, plain.id), ratio=ratio, resolved=kind == "flops" or time_ratio is not None,
                       epochs=epochs, needs=list(plain.needs))  # fmt: skip
        specs.append(spec)
    return specs


def matched_note(spec: Spec, by_id: dict[str, Spec]) -> str:
    """How a matched run's epochs were chosen, for the plan and the log."""
    plain = by_id[spec.pair[1]]
    if spec.matched == "flops":
        return f"equal compute: {plain.epochs} epochs x FLOP ratio {spec.ratio:.2f}"
    if not spec.resolved:
        return (f"equal time: {plain.epochs} epochs x {spec.ratio:.2f}, the cost model's estimate (the suite times "
                "both steps side by side first)")  # fmt: skip
    return f"equal time: {plain.epochs} epochs x step-time ratio {spec.ratio:.2f} (timed side by side)"


def matched_label(plain: Spec, kind: str, epochs: int) -> str:
    """The row label of a matched run."""
    return f"{plain.label}, {KINDS[kind]} ({epochs} epochs)"


def estimate_seconds(spec: Spec) -> float:
    """The run's expected wall time on the reference machine (2 idle cores)."""
    scale = PIXEL_SCALE[spec.data] * CALIBRATION
    train_ms = MS_PER_IMAGE[spec.cost] * spec.train_images
    eval_ms = EVAL_MS_PER_IMAGE.get(spec.cost, EVAL_FRACTION * MS_PER_IMAGE[spec.cost] * (2 if spec.gpd else 1))
    return STARTUP_S + scale * spec.epochs * (train_ms + eval_ms * spec.test_images) / 1000


def suite_estimate(mode: Mode, flop_ratios: FlopRatios | None = None) -> float:
    """Seconds of the mode's whole suite (all its groups and data sets, its own seeds) on 2 idle cores."""
    specs = build_specs(mode, list(mode.datasets), list(mode.groups), seeds_by_group(mode), Path("/nonexistent"),
                        flop_ratios)  # fmt: skip
    return sum(estimate_seconds(s) for s in specs)


def choose_long_epochs(
    budget_s: float, groups: tuple[str, ...] = LONG_GROUPS, flop_ratios: FlopRatios | None = None
) -> tuple[int, float, float]:
    """The most Fashion-MNIST epochs whose whole --long suite (of ``groups``) fits in ``budget_s`` by the
    cost model (at least 1, at most LONG_MAX_EPOCHS): (epochs, its estimate, the estimate with one epoch more)."""

    def cost(epochs: int) -> float:
        return suite_estimate(long_mode(epochs, groups), flop_ratios)

    epochs = 1
    while epochs < LONG_MAX_EPOCHS and cost(epochs + 1) <= budget_s:
        epochs += 1
    return epochs, cost(epochs), cost(epochs + 1)


def fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
        if seconds >= 3600
        else f"{seconds // 60} min {seconds % 60:02d} s"
    )


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


class RunFailed(Exception):
    def __init__(self, spec: Spec, returncode: int) -> None:
        super().__init__(f"{spec.id} failed (exit code {returncode})")
        self.returncode = returncode


def epochs_done(target: Path) -> int:
    """Epochs the run in ``target`` has logged to its metrics.csv (0 if none)."""
    try:
        return len(read_metrics(target))
    except (OSError, csv.Error):
        return 0


def resumable(spec: Spec, target: Path) -> bool:
    """An interrupted run that ``gpd train --resume`` can continue: config.yaml and checkpoint.pt
    written (after its first epoch) and epochs left to train (a run stopped after its last epoch
    but before the export cannot be resumed: it starts again)."""
    files = (target / "config.yaml").is_file() and (target / "checkpoint.pt").is_file()
    return files and 0 < epochs_done(target) < spec.epochs


def train_command(spec: Spec, target: Path, restart: bool = False) -> tuple[list[str], str]:
    """The ``gpd train`` command for ``spec`` and how it treats ``target``: started, resumed or restarted."""
    base = [sys.executable, "-m", "gpd", "train"]
    if not restart and resumable(spec, target):
        return [*base, "--resume", str(target), f"train.epochs={spec.epochs}"], "resumed"
    cmd = [*base, spec.config, *spec.overrides, f"output_dir={target}"]
    if target.exists():
        return [*cmd, "--overwrite"], "restarted"  # an interrupted run without a usable checkpoint
    return cmd, "started"


def train(spec: Spec, out: Path, log: Path, n_threads: int) -> tuple[float, str]:
    """Run ``gpd train`` for ``spec``: continue an interrupted run from its checkpoint, else start it
    (again); returns its wall time and how it was run (started, resumed, restarted)."""
    target = run_dir(out, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    n = str(n_threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    cmd, how = train_command(spec, target)
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n")
        handle.flush()
        result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        if result.returncode != 0 and how == "resumed":  # e.g. a checkpoint from an older gpd: start again
            cmd, how = train_command(spec, target, restart=True)
            handle.write(f"\n(the resume failed; starting the run again)\n$ {' '.join(cmd)}\n")
            handle.flush()
            result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise RunFailed(spec, result.returncode)
    return time.perf_counter() - started, how


def started_with(target: Path) -> dict | None:
    """The config.yaml a run directory was started with (None if it has none)."""
    import yaml

    try:
        return yaml.safe_load((target / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def plan_conflicts(specs: list[Spec], out: Path) -> list[str]:
    """Runs in ``out`` started with other sizes than this plan's (e.g. --long under another
    --budget-min): resuming would mix epoch counts between a run and its baseline."""
    conflicts = []
    for spec in specs:
        cfg = started_with(run_dir(out, spec))
        if not cfg:
            continue
        train_cfg, data_cfg = cfg.get("train") or {}, cfg.get("data") or {}
        want = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in spec.overrides}
        have = {"train.epochs": train_cfg.get("epochs"), "data.train_subset": data_cfg.get("train_subset"),
                "data.test_subset": data_cfg.get("test_subset")}  # fmt: skip
        for key, value in have.items():
            planned = want.get(key, "None")
            if str(value) != planned:
                conflicts.append(f"{spec.id}: started with {key}={value}, this plan has {key}={planned}")
    return conflicts


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv; a run of an older gpd has its old column names renamed."""
    from gpd.deprecated import upgrade_rows

    with open(path / "metrics.csv", newline="") as handle:
        return upgrade_rows(list(csv.DictReader(handle)), str(path / "metrics.csv"))


def number(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def accuracies(path: Path) -> dict[str, float | None]:
    """Last-epoch and best-epoch student accuracy, last-epoch D accuracy and gap (D - student),
    the student's mean CE over the first epoch, training seconds."""
    rows = read_metrics(path)
    student = [float(r["student_acc"]) for r in rows]
    return {
        "last": student[-1],
        "best": max(student),
        "dynamic": number(rows[-1].get("dynamic_acc")),
        "gap": number(rows[-1].get("gap")),
        "ce1": number(rows[0].get("loss_ce_student")),
        "seconds": sum(float(r["seconds"]) for r in rows),
    }


def run_state(spec: Spec, out: Path, ledger: dict[str, dict]) -> str:
    """Where an unfinished run stands, for the summary's list of missing runs."""
    target = run_dir(out, spec)
    failed = ledger.get(spec.id, {}).get("failed")
    done = epochs_done(target)
    if failed is not None:
        state = f"failed (exit code {failed}; see train.log)"
    elif not target.exists():
        return "not started"
    elif resumable(spec, target):
        return f"{done} of {spec.epochs} epochs done (interrupted, or still training); --resume continues it from its checkpoint"
    else:
        return "started, no usable checkpoint (interrupted, or still in its first epoch); --resume starts it again"
    return state + (f", after epoch {done} of {spec.epochs}" if done else "")


# --- reporting ---------------------------------------------------------------------------------


def mean_std(values: list[float], places: int = 2) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{places}f}"
    return f"{statistics.mean(values):.{places}f} ± {statistics.stdev(values):.{places}f}"


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
    "early": [("early", None), ("early_gpd", None)],
    "scratch": [("scratch", None), ("scratch_gpd", None)],
    "distill": [(m + suffix, None) for m in METHODS for suffix in ("", "_gpd")],
    "finetune": [
        ("scratch", "pretrained start (the scratch baseline, no fine-tuning)"),
        ("finetune", None),
        ("finetune_gpd", None),
    ],
    "matched": [
        row
        for gpd, plain in MATCHED_SCENARIOS.values()
        for row in (
            (plain, f"{'KD' if plain == 'kd' else plain}, equal epochs"),
            (f"{plain}_flops", None),
            (f"{plain}_time", None),
            (gpd, None),
        )
    ],
    "vit": [("vit", None), ("vit_gpd", None), ("vit_kd", None), ("vit_kd_gpd", None)],
    "segmentation": [("seg", None), ("seg_gpd", None), ("seg_cwd", None), ("seg_cwd_gpd", None)],
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
    "early": "Early training: the demo config for one short epoch, with and without GPD",
    "scratch": "Scratch: CE alone vs GPD",
    "distill": "Distillation from a static teacher, each method alone and with GPD",
    "finetune": "Fine-tuning the scratch baseline's student: plain vs GPD, equally long",
    "matched": "Cost-matched baselines: the plain student given GPD's training compute or time",
    "vit": "A transformer student: ViT-Ti (7 px patches), with and without GPD, from scratch and with KD",
    "segmentation": "Segmentation (test mIoU, %): seg_resnet8 with and without GPD, from scratch and with CWD",
    "ablation": "Ablations (scratch scenario)",
}


def group_table(
    group: str, data: str, specs: dict[str, Spec], results: dict[str, dict], seeds: list[int], show_ce: bool = False
) -> list[str]:
    """The group's table on ``data``: a row per planned run, over the seeds that finished; a row
    none of whose seeds finished says so, and *seeds* reads "k of n" while some are missing."""
    if not any(s.group == group and s.data == data for s in specs.values()):
        return []  # e.g. the ablations, which run on Fashion-MNIST only
    ce_head, ce_rule = (" student CE, epoch-1 mean |", "---|") if show_ce else ("", "")
    lines = [
        "| run | student, last epoch (%) | student, best epoch (%) | D, last epoch (%) "
        f"| Δ last vs no GPD, paired by seed (points) | gap D − student, last epoch (points) |{ce_head} seeds "
        "| time per run (s) |",
        f"|---|---|---|---|---|---|{ce_rule}---|---|",
    ]

    def last_by_seed(slug: str) -> dict[int, float]:
        return {s: results[i]["last"] for s in seeds if (i := f"{data}/s{s}/{slug}") in results}

    def column(done: list[dict], key: str, places: int = 2) -> str:
        return mean_std([r[key] for r in done if r.get(key) is not None], places)

    for slug, label in TABLE_ROWS[group]:
        ids = [i for seed in seeds if (i := f"{data}/s{seed}/{slug}") in specs]
        if not ids:
            continue
        done = [results[i] for i in ids if i in results]
        wall = [r["wall"] for r in done if r.get("wall") is not None]
        cells = [
            label or specs[ids[0]].label,
            column(done, "last"),
            column(done, "best"),
            column(done, "dynamic"),
            paired_delta(last_by_seed(slug), last_by_seed(base)) if (base := baseline_of(slug)) else "—",
            column(done, "gap"),
            *([column(done, "ce1", 3)] if show_ce else []),
            str(len(done)) if len(done) == len(ids) else f"{len(done)} of {len(ids)}",
            f"{statistics.mean(wall):.0f}" if wall else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


SUMMARY_INTRO = [
    "Last-epoch test accuracy (%), mean ± std over seeds, with each run's epochs. The baselines are the",
    "plain student (GPD off, same config otherwise) at GPD's epochs, at GPD's training compute (epochs",
    "times the measured ratio of training FLOPs per step) and at GPD's time on this machine (epochs",
    "times the ratio of seconds per training step, the two steps timed side by side); the longer runs",
    "keep the schedule's shape and each epoch's data order. Δ: GPD minus the baseline, seed by seed,",
    "then mean ± std. Cost: GPD's training FLOPs and seconds per step (side by side) over the plain",
    "student's, and the whole runs' training-plus-evaluation time over the equal-epoch baseline's.",
]


@functools.lru_cache(maxsize=1)
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
    notes: list[str] | None = None, ledger: dict[str, dict] | None = None,
    flop_ratios: dict[str, dict[str, float]] | None = None, time_ratios: dict[str, dict[str, float]] | None = None,
) -> str:  # fmt: skip
    by_id = {s.id: s for s in specs}
    seeds = sorted({s.seed for s in specs if s.seed is not None})
    missing = [s for s in specs if s.id not in results]
    group_seeds = {g: sorted({s.seed for s in specs if s.group == g and s.seed is not None}) for g in GROUPS}
    distinct = {tuple(v) for v in group_seeds.values() if v}
    seeds_line = ", ".join(map(str, seeds))
    if len(distinct) > 1:  # e.g. --early: the 15-step runs on seed 0 only
        seeds_line += " (" + "; ".join(f"{g}: {', '.join(map(str, v))}" for g, v in group_seeds.items() if v) + ")"
    text = [
        f"# Accuracy benchmark ({mode_name} mode{f', --epochs {args.epochs}' if args.epochs else ''})",
        "",
        f"Command: `{' '.join(['python', 'benchmarks/accuracy.py', *sys.argv[1:]])}`  ",
        f"Machine: {machine()}  ",
        f"Started {started:%Y-%m-%d %H:%M} UTC; load average at the start {load_start}, at the end {load_average()}  ",
        f"Wall time {fmt_time(wall)} for the runs trained in this invocation; estimate of the whole plan "
        f"{fmt_time(estimate)} (2 idle cores); all finished runs' wall times add up to "
        f"{fmt_time(sum(r['wall'] for r in results.values() if r.get('wall') is not None))}  ",
        f"Seeds: {seeds_line} (train.seed: initialisation, data order and, with a subset, which samples)",
        "",
        *[line for note in (notes or []) for line in (note, "")],
    ]
    if missing:
        text += [
            f"**Incomplete: {len(specs) - len(missing)} of {len(specs)} planned runs finished.** The tables cover",
            'the finished runs only: *seeds* reads "k of n" where seeds are missing, a row without any',
            "finished seed shows —, and Δ pairs only the seeds whose two runs both finished. The missing",
            "runs are listed at the end; `--resume` continues the suite.",
            "",
        ]
    else:
        text += [f"All {len(specs)} planned runs finished.", ""]
    text += [
        "Accuracy is top-1 on the test split (on fashion_mnist_seg: mean IoU), mean ± sample std over seeds. *Best",
        "epoch* picks the",
        "epoch with the highest test accuracy, so it is an optimistic (test-selected) number;",
        "*last epoch* is the honest one. D is the dynamic teacher, *gap* its last-epoch accuracy",
        "minus the student's. *Δ* is the GPD run's last-epoch",
        "accuracy minus that of the same scenario without GPD (scratch, the same KD method, plain",
        "fine-tuning; the ablations against the scratch baseline), taken seed by seed, then mean ± std:",
        "both runs of a seed share initialisation, data order and subset.",
        *(["*Student CE, epoch-1 mean* is metrics.csv's loss_ce_student of the first epoch: the",
           "student's cross-entropy averaged over that epoch's training steps."] if mode.show_ce else []),
        "",
    ]  # fmt: skip
    summary = summary_table([d for d in DATASETS if any(s.data == d for s in specs)], by_id, results, seeds,
                            flop_ratios or {}, time_ratios or {})  # fmt: skip
    if summary:
        text += ["## Does GPD pay for its compute?", "", *SUMMARY_INTRO, "", *summary, ""]
    for data in [d for d in DATASETS if any(s.data == d for s in specs)]:
        plan = mode.plans[data]
        train_n, test_n = split_sizes(data, plan)
        text += [f"## {data}", ""]
        if any(s.data == data and s.group != "early" for s in specs):
            has_teacher = f"{data}/teacher" in by_id
            others = (
                [f"fine-tuning {plan.finetune_epochs}"]
                if any(s.data == data and s.group == "finetune" for s in specs)
                else []
            )
            others += [f"static teacher {plan.teacher_epochs}"] if has_teacher else []
            epochs_text = f"{plan.epochs} ({', '.join(others)})" if others else str(plan.epochs)
            text += [
                f"{train_n} training images ({'all' if plan.train_subset is None else 'a seeded subset'}), {test_n} "
                f"test images, batch {plan.batch_size}; epochs: {epochs_text}; student {STUDENTS[data]}"
                f"{f', static teacher {TEACHERS[data]}' if has_teacher else ''}.",
                "",
            ]
            if data == SEGMENTATION_DATA:
                text += [
                    "On fashion_mnist_seg every figure is the test **mean IoU** (%) over the 11 classes (background",
                    "and the 10 garments; docs/segmentation.md), not top-1 accuracy: the runs' headline metric.",
                    "",
                ]
        early_ids = [s.id for s in specs if s.data == data and s.slug == "early_gpd"]
        if mode.early_plan is not None and early_ids:
            ep = mode.early_plan
            e_train, e_test = split_sizes(data, ep)
            steps = ep.epochs * (e_train // ep.batch_size)
            text += [
                f"Early group: `gpd train {' '.join(o for o in by_id[early_ids[0]].overrides if not o.startswith('train.seed='))}` (the bundled "
                f"demo config: resnet8, GPD at r = 2, λ = 3, no branch blocks), with and without gpd.enabled=false; "
                f"{e_train} training images, {ep.epochs} epoch{'s' if ep.epochs > 1 else ''} of batch {ep.batch_size} = {steps} steps, {e_test} "
                f"test images.",
                "",
            ]  # fmt: skip
        teacher = results.get(f"{data}/teacher")
        if teacher:
            text += [f"Static teacher ({TEACHERS[data]}, CE, seed 0): {teacher['last']:.2f}% (last epoch).", ""]
        elif f"{data}/teacher" in by_id:
            text += [f"Static teacher ({TEACHERS[data]}, CE, seed 0): not finished yet.", ""]
        for group in GROUPS:
            table = group_table(group, data, by_id, results, seeds, mode.show_ce)
            if table:
                text += [f"### {GROUP_TITLES[group]}", "", *table, ""]
                key = f"{data}-{group}"
                if key in reports:
                    rel = os.path.relpath(reports[key], out)
                    text += [f"Plots of seed {seeds[0]}: [{rel}/report.md]({rel}/report.md), "
                             f"![accuracy]({rel}/accuracy.png)", ""]  # fmt: skip
    if missing:
        text += ["## Missing runs", "", "| run | state |", "|---|---|"]
        text += [f"| {s.id} | {run_state(s, out, ledger or {})} |" for s in missing]
        text.append("")
    text += [
        "## Per-run times",
        "",
        "Wall time of the `gpd train` process (start-up included), the epochs' training and evaluation",
        "time from metrics.csv, the estimate for 2 idle cores, the threads the run was given",
        "(OMP_NUM_THREADS: the cores other processes left free) and the 1-minute load average at its end.",
        "A run continued from its checkpoint counts the wall time of its last part only.",
        "",
        "| run | wall (s) | training + evaluation (s) | estimate (s) | threads | load at the end |",
        "|---|---|---|---|---|---|",
    ]
    for spec in specs:
        r = results.get(spec.id)
        if r:
            wall_s = f"{r['wall']:.0f}" if r.get("wall") is not None else "—"
            if r.get("how") == "resumed":
                wall_s += " (resumed)"
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
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="a few minutes: 1 seed, tiny subsets, every scenario once")
    which.add_argument("--long", action="store_true",
                       help="the whole Fashion-MNIST plus the digits, 3 seeds, scratch / KD / fine-tuning with and "
                            "without GPD, the epochs sized to --budget-min")  # fmt: skip
    which.add_argument("--early", action="store_true",
                       help="the early-training re-measure: the 15-step demo run with and without GPD (seed 0) "
                            "and the 12.5k-image, 2-epoch scratch group (3 seeds)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test's even smaller mode
    parser.add_argument("--budget-min", type=float, default=BUDGET_MIN,
                        help=f"minutes the whole suite may take on 2 idle cores (default {BUDGET_MIN}): --long picks "
                             "the most Fashion-MNIST epochs that fit by the cost model")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="train.seed values of every group (default 0 1 2; --quick: 0; --early: 0 for the "
                             "15-step runs)")  # fmt: skip
    parser.add_argument(
        "--only", default=None, help=f"comma-separated groups: {', '.join(GROUPS)} (default: the mode's)"
    )
    parser.add_argument(
        "--data", default=None, help=f"comma-separated data sets: {', '.join(DATASETS)} (default: the mode's)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse --out: skip runs whose student.pt exists, continue interrupted ones",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="train nothing: write RESULTS.md from the runs in --out (finished and missing)",
    )
    parser.add_argument("--results", default="RESULTS.md",
                        help="the summary's file name in --out (default RESULTS.md; e.g. RESULTS-early.md when --early "
                             "reuses the scratch runs of a full-suite work dir with --resume)")  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of every run (default: the cores other processes leave free, sampled before each run)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of the scratch, distillation and ablation runs instead of the mode's "
        "(fine-tuning and the static teacher keep theirs; with --long: the Fashion-MNIST "
        "epochs instead of the budget's, fine-tuning and teacher in proportion); use a new --out for it",
    )
    parser.add_argument("--estimate", action="store_true", help="print the plan and its time estimate, run nothing")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.budget_min <= 0:
        parser.error(f"--budget-min must be positive, got {args.budget_min}")
    if args.tiny and args.long:
        parser.error("--tiny cannot be combined with --long")
    for value, known, what in ((args.only, GROUPS, "--only"), (args.data, DATASETS, "--data")):
        bad = [v for v in (value or "").split(",") if value is not None and v not in known]
        if bad:
            parser.error(f"{what}: unknown {', '.join(bad)}; choose from {', '.join(known)}")
    return args


def select_mode(args: argparse.Namespace, flop_ratios: FlopRatios | None = None) -> tuple[str, Mode, list[str]]:
    """The mode's name, its plans (--epochs and, for --long, the budget applied) and lines describing the sizing."""
    budget_s = args.budget_min * 60
    if args.long:
        only = args.only.split(",") if args.only else []
        groups = (
            *LONG_GROUPS,
            *(g for g in ("matched", "vit") if g in only),
        )  # sized with the optional groups asked for
        if args.epochs is not None:
            epochs, notes = args.epochs, [f"Fashion-MNIST epochs: {args.epochs} (--epochs)."]
        else:
            epochs, fit, more = choose_long_epochs(budget_s, groups, flop_ratios)
            notes = [
                f"Fashion-MNIST epochs: {epochs}, the most whose whole --long suite ({', '.join(groups)}) fits the "
                f"{args.budget_min:g}-minute budget by the cost model: estimate {fmt_time(fit)} ({fmt_time(more)} "
                f"with {epochs + 1} epochs)."
            ]
            if fit > budget_s:
                notes.append(f"note: even 1 epoch exceeds the {args.budget_min:g}-minute budget")
        mode = long_mode(epochs, groups)
        fm = mode.plans["fashion_mnist"]
        notes[0] += (f" Fine-tuning {fm.finetune_epochs}, static teacher {fm.teacher_epochs}; the digits keep "
                     f"{mode.plans['digits'].epochs} (fine-tuning {mode.plans['digits'].finetune_epochs}).")  # fmt: skip
        return "long", mode, notes
    name = (
        ("early-tiny" if args.tiny else "early")
        if args.early
        else "tiny"
        if args.tiny
        else "quick"
        if args.quick
        else "full"
    )
    mode = MODES[name]
    if args.epochs is not None:
        mode = replace(mode, plans={d: replace(p, epochs=args.epochs) for d, p in mode.plans.items()})
    return name, mode, []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    flop_ratios = FlopRatios(out / FLOP_RATIOS_FILE)  # measured once per work dir, then kept
    measured_before = set(flop_ratios.values)
    mode_name, mode, notes = select_mode(args, flop_ratios)
    groups = args.only.split(",") if args.only else list(mode.groups)
    datasets = args.data.split(",") if args.data else list(mode.datasets)
    for chosen, known, what in ((groups, (*mode.groups, *mode.optional_groups), "groups"),
                                (datasets, mode.datasets, "data sets")):  # fmt: skip
        if bad := [v for v in chosen if v not in known]:
            print(
                f"accuracy.py: {mode_name} mode has no {', '.join(bad)}; its {what}: {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
    seeds = seeds_by_group(mode, args.seeds)
    # step times are measured when the suite runs (the runs' threads, side by side); --estimate uses a
    # work dir's recorded ones, else the cost model
    time_ratios = TimeRatios(out / TIME_RATIOS_FILE, threads=args.threads or cores())
    timed_before = set(time_ratios.values)
    use_times = not args.estimate or bool(time_ratios.values)
    specs = build_specs(mode, datasets, groups, seeds, out, flop_ratios, time_ratios if use_times else None)
    finished = {s.id for s in specs if (run_dir(out, s) / "student.pt").is_file()}
    for ratios, before, what, file in (
        (flop_ratios, measured_before, "Training FLOPs per step", FLOP_RATIOS_FILE),
        (time_ratios, timed_before, "Seconds per training step, timed side by side", TIME_RATIOS_FILE),
    ):
        if ratios.values:
            source = "measured now" if set(ratios.values) - before else f"from {file}"
            notes.append(f"{what}, GPD / plain ({source}; the matched runs' epochs): "
                         + ", ".join(f"{k} {v['ratio']:.2f}" for k, v in sorted(ratios.values.items())) + ".")  # fmt: skip
    estimate = sum(estimate_seconds(s) for s in specs)
    all_seeds = sorted({s.seed for s in specs if s.seed is not None})
    per_group = {g: seeds[g] for g in groups if seeds[g] != all_seeds}
    seed_text = " ".join(map(str, all_seeds)) + "".join(f"; {g}: {' '.join(map(str, v))}" for g, v in per_group.items())
    print(f"{len(specs)} runs ({mode_name} mode, seeds {seed_text}); estimated {fmt_time(estimate)} "
          f"on 2 idle cores, one run at a time", flush=True)  # fmt: skip
    for note in notes:
        print(note, flush=True)
    if mode.budget_min is not None and args.epochs is None and estimate > mode.budget_min * 60:
        print(f"note: the estimate exceeds the {mode.budget_min:g}-minute budget of the {mode_name} suite", flush=True)
    if args.estimate:
        for spec in specs:
            what = f"  {matched_note(spec, by_id={s.id: s for s in specs})}" if spec.matched else ""
            print(f"  {spec.id:45s} {spec.epochs:3d} ep {estimate_seconds(spec):6.0f} s{what}")
        return 0
    if args.summary:
        if not out.is_dir():
            print(f"accuracy.py: {out} does not exist", file=sys.stderr)
            return 2
    elif out.exists() and any(out.iterdir()) and not args.resume:
        print(f"accuracy.py: {out} exists and is not empty; pass --resume to continue it (finished runs are skipped) "
              "or choose another --out", file=sys.stderr)  # fmt: skip
        return 2
    if conflicts := plan_conflicts(specs, out):
        print("accuracy.py: runs in --out were started with another plan (a run and its baseline must train equally "
              "long); use the same options (--budget-min, --epochs) or another --out:\n  " + "\n  ".join(conflicts),
              file=sys.stderr)  # fmt: skip
        return 2
    out.mkdir(parents=True, exist_ok=True)
    flop_ratios.save()
    time_ratios.save()
    log = out / "train.log"
    ledger_path = out / "times.json"
    ledger: dict[str, dict] = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    started, load_start, clock = dt.datetime.now(dt.timezone.utc), load_average(), time.perf_counter()

    def result_of(spec: Spec) -> dict:
        return {**accuracies(run_dir(out, spec)), **ledger.get(spec.id, {})}

    results = {s.id: result_of(s) for s in specs if s.id in finished}

    def summarize(reports: dict[str, Path]) -> str:
        summary = write_summary(args, mode_name, mode, specs, results, out, started, load_start,
                                time.perf_counter() - clock, reports, estimate, notes, ledger,
                                flop_ratios.values, time_ratios.values)  # fmt: skip
        (out / args.results).write_text(summary)
        return summary

    if args.summary:
        flop_ratios.save()
        print(summarize({}))
        print(f"wrote {out / args.results}: {len(results)} of {len(specs)} runs finished")
        return 0
    remaining = estimate
    for index, spec in enumerate(specs, 1):
        remaining -= estimate_seconds(spec)
        if spec.id in results:
            print(f"[{index}/{len(specs)}] {spec.id}: finished earlier, skipped", flush=True)
        else:
            if spec.matched:
                print(f"    {spec.id}: {matched_note(spec, {s.id: s for s in specs})}", flush=True)
            n_threads = threads(args.threads)
            print(f"[{index}/{len(specs)}] {spec.id} ({n_threads} threads) ...", end=" ", flush=True)
            try:
                seconds, how = train(spec, out, log, n_threads)
            except RunFailed as error:
                ledger[spec.id] = {"failed": error.returncode}
                ledger_path.write_text(json.dumps(ledger, indent=1))
                summarize({})
                print(f"\naccuracy.py: {error}; see {log}; RESULTS.md lists the runs still missing", file=sys.stderr)
                return 1
            ledger[spec.id] = {"wall": seconds, "threads": n_threads, "load": os.getloadavg()[0], "how": how}
            ledger_path.write_text(json.dumps(ledger, indent=1))
            elapsed = time.perf_counter() - clock
            print(f"{seconds:.0f} s{' (resumed from its checkpoint)' if how == 'resumed' else ''} (estimate "
                  f"{estimate_seconds(spec):.0f} s); elapsed {fmt_time(elapsed)}, left about {fmt_time(remaining)} "
                  "by the estimate", flush=True)  # fmt: skip
            results[spec.id] = result_of(spec)
            summarize({})  # a truthful partial summary, should the suite stop here
        r = results[spec.id]
        print(f"    student {r['last']:.2f}% (best {r['best']:.2f}%)"
              + (f", D {r['dynamic']:.2f}%" if r["dynamic"] is not None else ""), flush=True)  # fmt: skip
    wall = time.perf_counter() - clock
    summary = summarize(make_reports(specs, out, log))
    print(summary)
    print(f"wrote {out / args.results}; total wall time {fmt_time(wall)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
