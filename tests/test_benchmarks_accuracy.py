"""Smoke test of benchmarks/accuracy.py: its smallest mode runs every group and writes RESULTS.md."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
    assert finetune == ["pretrained start (the scratch baseline, no fine-tuning)", "plain fine-tuning", "fine-tuning + GPD"]
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
