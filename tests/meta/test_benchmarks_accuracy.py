"""Smoke test of benchmarks/accuracy.py: its smallest mode runs every group and writes RESULTS.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "accuracy.py"

pytest.importorskip("sklearn", reason="scikit-learn is not installed (make test installs it)")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)  # fmt: skip


def table_rows(text: str, heading: str) -> list[list[str]]:
    section = text.split(f"### {heading}", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def load_script():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_paired_delta_is_taken_seed_by_seed() -> None:
    paired_delta = load_script().paired_delta
    # differences 1, 0, 2 (seed 3 has no baseline and is left out): mean 1, sample std 1
    assert paired_delta({0: 80.0, 1: 81.0, 2: 82.0, 3: 99.0}, {0: 79.0, 1: 81.0, 2: 80.0}) == "+1.00 ± 1.00"
    # the separate means differ by 1.0 too, but per seed the run is always 1 below its baseline
    assert paired_delta({0: 70.0, 1: 90.0}, {0: 71.0, 1: 91.0}) == "-1.00 ± 0.00"
    assert paired_delta({0: 50.5}, {0: 50.0}) == "+0.50"
    assert paired_delta({0: 50.0}, {1: 50.0}) == "—"


def test_tiny_scratch_and_ablation_then_resume(tmp_path: Path) -> None:
    """About 40 s: three small runs on the digits, their tables and plots; a rerun skips them."""
    out = tmp_path / "bench"
    first = run("--tiny", "--data", "digits", "--only", "scratch,ablation", "--out", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.splitlines()[0].startswith("3 runs (tiny mode, seeds 0); estimated")
    results = (out / "RESULTS.md").read_text()
    rows = {row[0]: row for row in table_rows(results, "Scratch: CE alone vs GPD")}
    assert set(rows) == {"scratch", "scratch + GPD"}
    assert rows["scratch"][3] == "—" and float(rows["scratch + GPD"][3]) >= 0  # only GPD has a D
    delta = float(rows["scratch + GPD"][1]) - float(rows["scratch"][1])  # one seed: the paired difference
    assert rows["scratch"][4] == "—" and float(rows["scratch + GPD"][4]) == pytest.approx(delta, abs=0.011)
    for row in rows.values():
        assert 0 <= float(row[1]) <= 100 and float(row[1]) <= float(row[2])  # last <= best
    assert "sharing off (gpd.share=false)" in {r[0] for r in table_rows(results, "Ablations")}
    assert (out / "reports" / "digits-scratch" / "accuracy.png").is_file()
    assert "## Per-run times" in results and "Distillation" not in results

    again = run("--tiny", "--data", "digits", "--out", str(out))  # an existing work dir is not reused silently
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run("--tiny", "--data", "digits", "--out", str(out), "--resume", "--only", "scratch")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("finished earlier, skipped") == 2


@pytest.mark.slow
def test_tiny_mode_runs_every_group(tmp_path: Path) -> None:
    """About 3 minutes on a loaded 2-core machine: teacher, KD, fine-tuning and ablation runs too."""
    out = tmp_path / "bench"
    first = run("--tiny", "--data", "digits", "--out", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "runs (tiny mode, seeds 0); estimated" in first.stdout.splitlines()[0]
    results = (out / "RESULTS.md").read_text()
    assert "## digits" in results and "Static teacher (resnet20" in results
    rows = {row[0]: row for row in table_rows(results, "Scratch: CE alone vs GPD")}
    assert set(rows) == {"scratch", "scratch + GPD"}
    assert rows["scratch"][3] == "—" and float(rows["scratch + GPD"][3]) >= 0  # only GPD has a D
    assert {r[0] for r in table_rows(results, "Distillation from a static teacher")} == {"KD", "KD + GPD"}
    finetune = [r[0] for r in table_rows(results, "Fine-tuning the scratch baseline")]
    assert finetune == [
        "pretrained start (the scratch baseline, no fine-tuning)",
        "plain fine-tuning",
        "fine-tuning + GPD",
    ]
    assert "sharing off (gpd.share=false)" in {r[0] for r in table_rows(results, "Ablations")}
    for row in table_rows(results, "Scratch: CE alone vs GPD"):
        assert 0 <= float(row[1]) <= 100 and float(row[1]) <= float(row[2])  # last <= best
    assert (out / "reports" / "digits-scratch" / "accuracy.png").is_file()
    assert "## Per-run times" in results


# --- --long: epochs sized to the budget --------------------------------------------------------


@pytest.mark.parametrize("budget_min", [90, 150, 300])
def test_long_epochs_are_the_most_that_fit_the_budget(budget_min: int) -> None:
    m = load_script()
    epochs, fit, more = m.choose_long_epochs(budget_min * 60)
    assert fit == m.suite_estimate(m.long_mode(epochs)) <= budget_min * 60  # the chosen plan fits
    assert more == m.suite_estimate(m.long_mode(epochs + 1)) > budget_min * 60  # one more epoch would not
    assert m.choose_long_epochs(budget_min * 60 * 2)[0] >= epochs  # a larger budget never buys fewer epochs


def test_long_plan_pairs_every_run_with_an_equally_long_baseline() -> None:
    m = load_script()
    mode = m.long_mode(m.choose_long_epochs(90 * 60)[0])
    specs = m.build_specs(mode, list(mode.datasets), list(mode.groups), m.seeds_by_group(mode), Path("/w"))
    by_id = {s.id: s for s in specs}
    assert {s.slug for s in specs} == {"teacher", "scratch", "scratch_gpd", "kd", "kd_gpd", "finetune", "finetune_gpd"}
    assert {s.seed for s in specs} == {None, 0, 1, 2}
    for spec in specs:
        if spec.data == "fashion_mnist":  # the whole training and test sets
            assert (spec.train_images, spec.test_images) == (60000, 10000)
            assert not any(o.startswith(("data.train_subset=", "data.test_subset=")) for o in spec.overrides)
        base = m.baseline_of(spec.slug)
        if base:
            assert by_id[f"{spec.data}/s{spec.seed}/{base}"].epochs == spec.epochs


def test_long_and_early_estimates_print_their_plans() -> None:
    long = run("--out", "unused", "--long", "--estimate", timeout=60)
    assert long.returncode == 0, long.stderr
    lines = long.stdout.splitlines()
    assert lines[0].startswith("38 runs (long mode, seeds 0 1 2); estimated")
    assert lines[1].startswith("Fashion-MNIST epochs: ") and "fits the 90-minute budget" in lines[1]
    assert "fashion_mnist/s2/kd_gpd" in long.stdout and "dkd" not in long.stdout and "ablation" not in long.stdout
    small = run("--out", "unused", "--long", "--estimate", "--budget-min", "200", timeout=60)
    assert "fits the 200-minute budget" in small.stdout

    early = run("--out", "unused", "--early", "--estimate", timeout=60)
    assert early.returncode == 0, early.stderr
    assert early.stdout.splitlines()[0].startswith("8 runs (early mode, seeds 0 1 2; early: 0); estimated")
    ids = [line.split()[0] for line in early.stdout.splitlines()[1:]]
    assert ids[:2] == ["fashion_mnist/s0/early", "fashion_mnist/s0/early_gpd"]
    assert "fashion_mnist/s2/scratch_gpd" in ids and "fashion_mnist/s1/early" not in ids


def test_early_runs_are_the_demo_and_its_scratch_group_is_the_default_suites() -> None:
    m = load_script()
    early = m.MODES["early"]
    specs = {
        s.id: s
        for s in m.build_specs(early, ["fashion_mnist"], list(early.groups), m.seeds_by_group(early), Path("/w"))
    }
    demo, plain = specs["fashion_mnist/s0/early_gpd"], specs["fashion_mnist/s0/early"]
    assert demo.config == plain.config == "fashion_mnist/demo"  # `gpd train` with no config
    assert demo.overrides == ["data.train_subset=2000", "train.epochs=1", "train.seed=0"]
    assert plain.overrides == [*demo.overrides, "gpd.enabled=false"]
    assert demo.label.startswith("15 steps")  # 2000 // 128: the last partial batch is dropped
    full = m.MODES["full"]
    reference = {s.id: s for s in m.build_specs(full, ["fashion_mnist"], ["scratch"], [0, 1, 2], Path("/w"))}
    assert {i: s.overrides for i, s in specs.items() if s.group == "scratch"} == {
        i: s.overrides for i, s in reference.items()
    }


# --- partial suites: missing runs, resuming ------------------------------------------------------

METRICS_HEADER = "epoch,lr,train_loss,loss_ce_student,student_acc,dynamic_acc,gap,static_teacher_acc,img_per_s,seconds"


def fake_run(path: Path, accs: list[float], epochs: int, finished: bool = True, dynamic: bool = True) -> None:
    """A run directory as gpd train leaves it: config.yaml, metrics.csv and student.pt or checkpoint.pt."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"data:\n  train_subset: null\n  test_subset: null\ntrain:\n  epochs: {epochs}\n")
    rows = [
        f"{i},0.1,1.0,{2.0 - i / 10},{acc},{acc + 5 if dynamic else ''},{5.0 if dynamic else ''},,100,1.0"
        for i, acc in enumerate(accs, 1)
    ]
    (path / "metrics.csv").write_text("\n".join([METRICS_HEADER, *rows]) + "\n")
    (path / ("student.pt" if finished else "checkpoint.pt")).write_bytes(b"")


def test_a_partial_suite_reports_its_missing_runs(tmp_path: Path) -> None:
    """--summary of a half-done --long work dir: tables over the finished seeds, the missing runs listed."""
    m = load_script()
    out = tmp_path / "bench"
    runs = out / "runs" / "digits"
    fake_run(runs / "s0" / "scratch", [70.0, 80.0], 10, dynamic=False)
    fake_run(runs / "s0" / "scratch_gpd", [75.0, 81.5], 10)
    fake_run(runs / "s1" / "scratch", [72.0, 79.0], 10, dynamic=False)
    fake_run(runs / "s1" / "scratch_gpd", [60.0, 70.0, 74.0], 10, finished=False)  # interrupted after epoch 3
    args = ("--long", "--data", "digits", "--only", "scratch,finetune", "--seeds", "0", "1", "--out", str(out))
    result = run(*args, "--summary", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (out / "RESULTS.md").read_text()
    assert "Incomplete: 3 of 8 planned runs finished." in text
    rows = {row[0]: row for row in table_rows(text, "Scratch: CE alone vs GPD")}
    assert rows["scratch"][1] == "79.50 ± 0.71" and rows["scratch"][-2] == "2"
    # only seed 0 has both runs: Δ = 81.5 - 80; D and the gap of the last epoch
    assert rows["scratch + GPD"][1:6] == ["81.50", "81.50", "86.50", "+1.50", "5.00"]
    assert rows["scratch + GPD"][-2] == "1 of 2"
    finetune = {row[0]: row for row in table_rows(text, "Fine-tuning the scratch baseline")}
    assert finetune["plain fine-tuning"][1] == "—" and finetune["plain fine-tuning"][-2] == "0 of 2"
    section = text.split("## Missing runs", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|") for line in section.splitlines() if line.startswith("| digits/")]
    missing = {row[1].strip(): row[2].strip() for row in cells}
    assert set(missing) == {
        "digits/s1/scratch_gpd",
        *(f"digits/s{s}/finetune{g}" for s in (0, 1) for g in ("", "_gpd")),
    }
    assert missing["digits/s1/scratch_gpd"].startswith(
        "3 of 10 epochs done (interrupted, or still training); --resume continues"
    )
    assert missing["digits/s0/finetune"] == "not started"

    # --resume would continue the interrupted run from its checkpoint, with the plan's epochs
    mode = m.long_mode(2)
    spec = next(s for s in m.build_specs(mode, ["digits"], ["scratch"], [1], out) if s.slug == "scratch_gpd")
    cmd, how = m.train_command(spec, runs / "s1" / "scratch_gpd")
    assert how == "resumed" and cmd[-3:] == ["--resume", str(runs / "s1" / "scratch_gpd"), "train.epochs=10"]

    # a work dir started under another plan is refused rather than mixed
    (runs / "s0" / "scratch" / "config.yaml").write_text("train:\n  epochs: 4\ndata:\n  train_subset: null\n")
    refused = run(*args, "--resume", timeout=120)
    assert refused.returncode == 2 and "digits/s0/scratch: started with train.epochs=4" in refused.stderr


@pytest.mark.slow  # the benchmark script's resume and early mode; the tiny scratch run stays in the default suite
def test_resume_continues_an_interrupted_run_from_its_checkpoint(tmp_path: Path) -> None:
    """About 30 s: a tiny 2-epoch digits run stopped after epoch 1 is resumed, not restarted."""
    m = load_script()
    out = tmp_path / "bench"
    args = ("--tiny", "--data", "digits", "--only", "scratch", "--epochs", "2", "--out", str(out))
    spec = next(s for s in m.build_specs(m.replace(m.MODES["tiny"], plans={
        d: m.replace(p, epochs=2) for d, p in m.MODES["tiny"].plans.items()}), ["digits"], ["scratch"], [0], out.resolve())
        if s.slug == "scratch")  # fmt: skip
    target = m.run_dir(out.resolve(), spec)
    one_epoch = [o if not o.startswith("train.epochs=") else "train.epochs=1" for o in spec.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-m", "gpd", "train", spec.config, *one_epoch, f"output_dir={target}"],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    # the state a 2-epoch run leaves when stopped after its first epoch: no student.pt yet
    (target / "student.pt").unlink()
    config = target / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1\n", "epochs: 2\n", 1))
    resumed = run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from its checkpoint" in resumed.stdout
    assert len((target / "metrics.csv").read_text().strip().splitlines()) == 3  # header, epoch 1, epoch 2
    assert "All 2 planned runs finished." in (out / "RESULTS.md").read_text()


def fashion_mnist_available() -> bool:
    from gpd.data import locate

    return locate.find_idx_root("FashionMNIST", [*locate.default_roots(), locate.DEBIAN_FASHION_MNIST_DIR]) is not None


@pytest.mark.slow  # the benchmark script's resume and early mode; the tiny scratch run stays in the default suite
def test_tiny_early_mode(tmp_path: Path) -> None:
    """Under a minute: the early mode's four runs on tiny Fashion-MNIST subsets, with the CE column."""
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup_data.sh)")
    out = tmp_path / "bench"
    result = run("--early", "--tiny", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("4 runs (early-tiny mode, seeds 0); estimated")
    text = (out / "RESULTS.md").read_text()
    rows = {row[0]: row for row in table_rows(text, "Early training")}
    assert set(rows) == {
        "2 steps, CE alone (gpd.enabled=false)",
        "2 steps, GPD (the demo: r = 2, λ = 3, no branch blocks)",
    }
    for row in rows.values():
        assert float(row[6]) > 0  # the student's first-epoch CE
    assert {r[0] for r in table_rows(text, "Scratch: CE alone vs GPD")} == {"scratch", "scratch + GPD"}
    assert "All 4 planned runs finished." in text


# --- cost-matched baselines, the ViT group, the summary table ------------------------------------

RATIOS = {"fashion_mnist/scratch": 5.35, "fashion_mnist/kd": 3.06, "digits/scratch": 10.4, "digits/kd": 5.5}


def known_ratios(m, path: Path | None = None):
    """FLOP ratios given, not measured (the measurement builds models: seconds per scenario)."""
    ratios = m.FlopRatios(path, measure=lambda gpd, plain: pytest.fail(f"measured {gpd[0]}"))
    ratios.values = {k: {"ratio": v, "gpd_flops": v, "plain_flops": 1.0} for k, v in RATIOS.items()}
    return ratios


def test_matched_epochs_scale_by_the_cost_ratio() -> None:
    m = load_script()
    assert m.matched_epochs(2, 5.35) == 11 and m.matched_epochs(2, 3.06) == 6  # rounded to the nearest epoch
    assert m.matched_epochs(10, 1.04) == 10 and m.matched_epochs(1, 0.2) == 1  # at least one epoch
    with pytest.raises(ValueError):
        m.matched_epochs(2, 0.0)
    # the warm-up stays the same fraction of the longer run; everything else is kept
    assert m.matched_overrides(["a=1", "train.epochs=2", "train.seed=0"], 11, 2, 0.1) == [
        "a=1", "train.seed=0", "train.epochs=11", "train.warmup_epochs=0.55"]  # fmt: skip


def test_flop_ratios_are_measured_once_and_kept(tmp_path: Path) -> None:
    m = load_script()
    calls = []

    def measure(gpd, plain):
        calls.append((gpd, plain))
        return 8.0, 2.0

    path = tmp_path / "flop_ratios.json"
    ratios = m.FlopRatios(path, measure=measure)
    assert ratios.ratio("d/scratch", ("g", []), ("p", [])) == 4.0
    assert ratios.ratio("d/scratch", ("g", []), ("p", [])) == 4.0 and len(calls) == 1
    ratios.save()
    assert m.FlopRatios(path, measure=measure).ratio("d/scratch", ("g", []), ("p", [])) == 4.0 and len(calls) == 1


def test_full_plan_has_the_matched_baselines_and_the_vit_runs() -> None:
    m = load_script()
    full = m.MODES["full"]
    specs = m.build_specs(full, list(full.datasets), list(full.groups), m.seeds_by_group(full), Path("/w"),
                          known_ratios(m))  # fmt: skip
    by_id = {s.id: s for s in specs}
    flops, time_run = by_id["fashion_mnist/s1/scratch_flops"], by_id["fashion_mnist/s1/scratch_time"]
    plain = by_id["fashion_mnist/s1/scratch"]
    assert flops.epochs == 11 and "train.epochs=11" in flops.overrides and flops.resolved  # 2 epochs x 5.35
    assert "train.warmup_epochs=0.55" in flops.overrides  # the bundled 0.1 of 2 epochs, scaled
    assert flops.config == plain.config == "fashion_mnist/scratch" and "train.seed=1" in flops.overrides
    assert by_id["fashion_mnist/s0/kd_flops"].epochs == 6 and by_id["digits/s2/scratch_flops"].epochs == 104
    assert not time_run.resolved and time_run.needs == plain.needs  # the cost model's guess until timed
    ids = list(by_id)
    for spec in specs:  # every run comes after the runs it needs
        assert all(ids.index(need) < ids.index(spec.id) for need in spec.needs)
    vit = {s.slug: s for s in specs if s.group == "vit" and s.seed == 0}
    assert set(vit) == {"vit", "vit_gpd", "vit_kd", "vit_kd_gpd"} and all(
        s.data == "fashion_mnist" for s in vit.values()
    )
    assert vit["vit_kd_gpd"].needs == ["fashion_mnist/teacher"] and vit["vit_gpd"].config == "fashion_mnist/vit_gpd"
    assert not any(s.group == "vit" for s in specs if s.data == "digits")
    # segmentation: the bundled fashion_mnist_seg configs on their own data set, which hosts nothing else
    seg = {s.slug: s for s in specs if s.data == "fashion_mnist_seg" and s.seed == 0}
    assert set(seg) == {"seg", "seg_gpd", "seg_cwd", "seg_cwd_gpd"} and {s.group for s in seg.values()} == {
        "segmentation"
    }
    assert (seg["seg"].config, seg["seg_gpd"].config) == ("fashion_mnist_seg/scratch", "fashion_mnist_seg/demo")
    assert seg["seg_cwd"].config == seg["seg_cwd_gpd"].config == "fashion_mnist_seg/kd_gpd"
    assert "gpd.enabled=false" in seg["seg_cwd"].overrides and seg["seg_cwd_gpd"].needs == ["fashion_mnist_seg/teacher"]
    assert by_id["fashion_mnist_seg/teacher"].config == "fashion_mnist_seg/teacher" and seg["seg"].epochs == 8
    assert not any(s.group == "segmentation" for s in specs if s.data != "fashion_mnist_seg")


def test_vit_configs_use_the_transformer_recipe() -> None:
    from gpd.config import load_config

    for name in ("vit", "vit_gpd", "vit_kd", "vit_kd_gpd"):
        cfg = load_config(f"fashion_mnist/{name}")
        t = cfg.train
        assert cfg.model.student == "timm:vit_tiny_patch16_224" and cfg.model.kwargs["patch_size"] == 7
        assert (t.optimizer, t.scheduler, t.label_smoothing, t.weight_decay) == ("adamw", "cosine", 0.1, 0.05)
        assert t.warmup_epochs > 0 and cfg.gpd.enabled == name.endswith("_gpd")
        assert (cfg.kd.method == "kd") == ("kd" in name)


def test_vit_gpd_takes_the_papers_per_layer_steps_under_adamw(tmp_path: Path) -> None:
    """The trainer gives AdamW Distiller.param_groups(adaptive=True): D's scaled tensors get an lr_scale."""
    from gpd.config import load_config
    from gpd.training.trainer import Trainer

    trainer = Trainer(load_config("fashion_mnist/vit_gpd", ["train.device=cpu"]), tmp_path / "run", dry_run=True)
    groups = trainer.run.optimizer.param_groups
    assert type(trainer.run.optimizer).__name__ == "AdamW"
    assert all("lr_scale" in g for g in groups) and {g["lr_scale"] for g in groups} != {1.0}


def test_time_matched_epochs_come_from_the_step_times_measured_once(tmp_path: Path) -> None:
    """Equal time: the plain epochs x the GPD/plain ratio of seconds per step, timed side by side once per
    work dir and kept in time_ratios.json (a resumed suite keeps its plan)."""
    m = load_script()
    out = tmp_path / "bench"
    calls = []

    def timed(gpd, plain):
        calls.append((gpd[0], plain[0]))
        return 0.75, 0.125  # seconds per step: GPD 6 times the plain step (exact in binary)

    tiny = m.MODES["tiny"]
    times = m.TimeRatios(out / m.TIME_RATIOS_FILE, measure=timed)
    specs = m.build_specs(tiny, ["digits"], ["matched"], [0], out, known_ratios(m), times)
    spec = next(s for s in specs if s.slug == "scratch_time")
    assert spec.resolved and spec.epochs == 6 and "train.epochs=6" in spec.overrides and spec.ratio == 6.0
    assert spec.needs == [] and calls[0] == ("fashion_mnist/scratch_gpd", "fashion_mnist/scratch")
    assert times.values["digits/scratch"] == {"ratio": 6.0, "gpd_step_seconds": 0.75, "plain_step_seconds": 0.125}
    times.save()
    again = m.TimeRatios(out / m.TIME_RATIOS_FILE, measure=lambda gpd, plain: pytest.fail("timed again"))
    specs = m.build_specs(tiny, ["digits"], ["matched"], [0], out, known_ratios(m), again)
    assert next(s for s in specs if s.slug == "scratch_time").epochs == 6 and len(calls) == 2  # scratch and kd


def test_step_times_are_timed_side_by_side() -> None:
    """benchmarks/step_times.py on the real runs: both steps of a tiny digits plan, GPD's the slower."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from step_times import step_seconds

    common = ["data.name=digits", "data.train_subset=64", "train.batch_size=32"]
    gpd, plain = step_seconds(("fashion_mnist/scratch_gpd", common), ("fashion_mnist/scratch", common), threads=1,
                              steps=3)  # fmt: skip
    assert 0 < plain < gpd


def test_summary_cells_say_not_measured_yet_and_pair_by_seed() -> None:
    m = load_script()
    import accuracy_summary as summary

    class S:
        def __init__(self, epochs: int) -> None:
            self.epochs = epochs

    slugs = {"scratch": 2, "scratch_flops": 11, "scratch_time": 9, "scratch_gpd": 2, "vit": 2, "vit_gpd": 2}
    specs = {f"fashion_mnist/s{s}/{slug}": S(e) for s in (0, 1) for slug, e in slugs.items()}
    ratios = {"fashion_mnist/scratch": {"ratio": 5.35}}
    empty = summary.summary_table(["fashion_mnist"], specs, {}, [0, 1], ratios)
    rows = [line.split(" | ") for line in empty[2:]]
    assert [r[0].lstrip("| ") for r in rows] == ["ResNet-8 from scratch (CE alone vs GPD), fashion_mnist",
                                                 "ViT-Ti from scratch (CE alone vs GPD), fashion_mnist"]  # fmt: skip
    assert rows[0][1:8] == [summary.NOT_MEASURED] * 7 and rows[0][-1] == "Not measured yet. |"
    assert rows[1][2] == summary.NOT_PLANNED and rows[1][6] == summary.NOT_PLANNED  # no matched ViT runs
    assert "5.35x FLOPs per step" in rows[0][8]

    acc = {"scratch": (80.0, 81.0), "scratch_flops": (81.0, 81.5), "scratch_time": (80.5, 81.2),
           "scratch_gpd": (82.0, 82.5)}  # fmt: skip
    results = {f"fashion_mnist/s{s}/{slug}": {"last": v[s], "seconds": 10.0 * (4 if slug == "scratch_gpd" else 1)}
               for slug, v in acc.items() for s in (0, 1)}  # fmt: skip
    row = summary.summary_table(["fashion_mnist"], specs, results, [0, 1], ratios)[2].split(" | ")
    assert row[1] == "80.50 ± 0.71 (2 ep)" and row[2] == "81.25 ± 0.35 (11 ep)"
    assert row[5:8] == ["+1.75 ± 0.35", "+1.00 ± 0.00", "+1.40 ± 0.14"]  # GPD - each baseline, seed by seed
    assert row[8] == "5.35x FLOPs per step; 4.00x time"
    assert row[9].startswith("Yes: GPD beats the plain student given the same training FLOPs by +1.00 ± 0.00")
    assert summary.verdict([-1.0, -2.0], [], [], 5.0).startswith("No:")
    assert summary.verdict([1.0, -1.0], [], [], 5.0).startswith("Not shown")
    assert summary.verdict([], [], [0.5, 0.7], 4.0).startswith("Unknown: only the equal-epoch baseline ran")
    assert summary.verdict([], [], [-14.0, -13.0], None).startswith("No: GPD does worse than the plain student even")
    assert m.paired_delta({0: 1.0}, {0: 0.5}) == "+0.50"


def test_estimate_lists_the_matched_and_vit_runs(tmp_path: Path) -> None:
    """The acceptance's --estimate, with the FLOP ratios a work dir keeps (measured on its first run)."""
    out = tmp_path / "bench"
    out.mkdir()
    (out / "flop_ratios.json").write_text(json.dumps({k: {"ratio": v} for k, v in RATIOS.items()}))
    result = run("--out", str(out), "--estimate", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("129 runs (full mode, seeds 0 1 2); estimated") and "exceeds" not in result.stdout
    assert "(from flop_ratios.json; the matched runs' epochs): digits/kd 5.50" in result.stdout
    line = next(x for x in lines if "fashion_mnist/s0/scratch_flops" in x)
    assert " 11 ep " in line and "equal compute: 2 epochs x FLOP ratio 5.35" in line
    assert "the cost model's estimate" in next(x for x in lines if "fashion_mnist/s2/kd_time" in x)
    assert "fashion_mnist/s2/vit_kd_gpd" in result.stdout and "digits/s0/vit" not in result.stdout
