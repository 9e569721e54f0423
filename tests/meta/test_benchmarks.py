"""Smoke tests of the benchmark scripts: they run and print the tables they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEED = ROOT / "benchmarks" / "speed.py"


def run_speed(*args: str, timeout: float) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(SPEED), *args], capture_output=True, text=True, timeout=timeout,
                         env=env, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under ``## heading``, as lists of cells."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_speed_quick_one_method() -> None:
    """The step table's KD row: times, ratios and FLOPs are numbers, GPD costs more FLOPs than KD alone."""
    text = run_speed("--quick", "--methods", "kd", "--no-extras", timeout=120)
    (row,) = table_rows(text, "Step time and FLOPs")
    assert row[:3] == ["resnet32x4 -> resnet8x4", "32 px, 4", "kd"]
    alone_ms, gpd_ms, time_ratio, flop_ratio = (float(cell) for cell in row[3:7])
    assert alone_ms > 0 and gpd_ms > 0 and time_ratio > 0
    assert 2.0 < flop_ratio < 2.6  # D is about 4x the student; the static teacher's forward is shared
    assert float(row[-4]) < float(row[-3])  # GFLOP alone < GFLOP with GPD


@pytest.mark.slow
def test_speed_quick_has_every_table() -> None:
    text = run_speed("--quick", timeout=600)
    rows = table_rows(text, "Step time and FLOPs")
    assert [row[2] for row in rows] == ["kd", "dkd", "reviewkd"]
    (view,) = table_rows(text, "Where the extra time goes")
    assert view[0] == "resnet8x4"
    (export,) = table_rows(text, "Exported student")
    assert export[0] == "resnet8x4" and float(export[4]) > 0
    branches = table_rows(text, "Six-branch blocks")
    assert [row[2] for row in branches] == ["KD alone", "KD + GPD"]
    assert "Total wall time" in text


def test_speed_branch_cost_row_reports_paths_floor_optimizer_and_memory() -> None:
    """--branch-cost: one CIFAR case; the least FLOP ratio lies between 1 and the FLOP ratio of the chosen paths."""
    text = run_speed("--branch-cost", "--cases", "cifar:32:4", "--steps", "1", "--warmup", "1", timeout=300)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| pair | input, batch |")
    (row,) = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert row[:2] == ["resnet32x4 -> resnet8x4", "32 px, 4"]
    plain_ms, branched_ms, time_ratio = (float(cell) for cell in row[2:5])
    assert plain_ms > 0 and branched_ms > 0 and time_ratio == pytest.approx(branched_ms / plain_ms, abs=0.01)
    plain_opt, branched_opt = (float(cell) for cell in row[5].split(" / "))
    assert 0 < plain_opt < branched_opt  # SGD on the branch tensors too
    flop_ratio, least = float(row[8]), float(row[9])
    assert 1.0 < least <= flop_ratio + 0.01
    plain_mb, branched_mb = float(row[10]), float(row[11])
    assert 0 < plain_mb < branched_mb  # the branch tensors' gradients at least
    assert row[-1] == "D: 5 merge; student: 5 merge"


def test_gpu_check_dry_run_passes_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh --dry-run: every check runs on CPU (fp16 skipped) and passes."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("the torch.compile check on CPU needs a C compiler")
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert len(rows) == 10 and "FAIL" not in text
    assert sum("| skipped |" in row for row in rows) == 2  # fp16 on CPU
    assert "DDP, 1 process (gloo) | pass" in text and "torch.compile GPD step" in text


def test_speed_hf_quick_rows_and_verdict() -> None:
    """--hf: a row per transformers model with times, ratios, the view's eval logits equal to the plain model's."""
    pytest.importorskip("transformers")
    text = run_speed("--hf", "--quick", "--seq", "32", timeout=300)
    rows = table_rows(text, "Student view of transformers models")
    assert [row[0].split(":")[0] for row in rows] == ["BertForSequenceClassification", "ViTForImageClassification"]
    assert [row[1] for row in rows] == ["32 tokens, 2", "224 px, 2"]
    for row in rows:
        plain_ms, view_ms, ratio = (float(cell) for cell in row[2:5])
        assert plain_ms > 0 and view_ms > 0 and ratio == pytest.approx(view_ms / plain_ms, rel=0.02)
        assert row[-1] == "identical"
        student, dynamic = (float(part.split()[0]) for part in row[-3].split(" / "))
        assert 2 * student < dynamic <= 4 * student  # r = 2: up to r² (embedding rows are not widened)
    assert "Target: the CPU-time ratio view/plain at most 1.10: bert " in text
