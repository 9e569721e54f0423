"""Smoke test of benchmarks/accuracy.py: its smallest mode runs every group and writes RESULTS.md."""

from __future__ import annotations

import importlib.util
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


def test_estimate_of_the_full_suite_fits_the_budget() -> None:
    result = run("--out", "unused", "--estimate", timeout=60)
    assert result.returncode == 0, result.stderr
    head = result.stdout.splitlines()[0]
    assert head.startswith("80 runs (full mode, seeds 0 1 2)")
    assert "exceeds" not in result.stdout


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
