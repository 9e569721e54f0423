"""Peak memory and step time of a GPD step in the joint and the sequential memory mode.

joint: one backward of the summed loss (D's and the student's graphs alive together).
sequential: D's backward first, then the student's forward and backward (the authors'
order). Each (case, mode) runs in its own process, so peak memory is its own; the two
modes alternate over ``--rounds`` and the fastest round counts, so machine noise hits
both alike. On CUDA, peak memory is torch.cuda.max_memory_allocated; on CPU it is the
process's peak resident set (model, optimizer and data included, hence the baseline
row: the same process after building everything, before the first step).

    .venv/bin/python benchmarks/memory_modes.py [--steps 10] [--rounds 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

CASES = [
    # (student, in_chans, image size, batch, classes)
    ("resnet20", 3, 32, 128, 100),
    ("tv:resnet18", 3, 112, 32, 1000),
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(
    student: str, in_chans: int, size: int, batch: int, classes: int, mode: str, steps: int, device: str
) -> dict:
    import torch

    from gpd.distill import Distiller
    from gpd.models import create_model
    from gpd.training.backward import joint_backward, sequential_backward

    torch.manual_seed(0)
    model = create_model(student, num_classes=classes, in_chans=in_chans)
    distiller = Distiller(model, ratio=2, input_size=(in_chans, size, size)).to(device).train()
    distiller.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, in_chans, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    backward = joint_backward if mode == "joint" else sequential_backward
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    built_rss = peak_rss_mb()
    times = []
    for step in range(steps + 2):
        if step == 2 and device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        backward(distiller, x, y, 0.0, nullcontext, lambda loss: loss.backward())
        optimizer.step()
        sync()
        if step >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return {
        "step_ms": 1000 * min(times),
        "median_ms": 1000 * statistics.median(times),
        "peak_mb": peak,
        "built_mb": built_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker), steps=args.steps, device=args.device)))
        return
    memory = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    print(f"| student (GPD r=2) | input, batch | {memory} joint | {memory} sequential | sequential/joint memory "
          "| step ms joint | step ms sequential | sequential/joint time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for student, in_chans, size, batch, classes in CASES:
        results: dict[str, list[dict]] = {"joint": [], "sequential": []}
        for _ in range(args.rounds):
            for mode in results:
                spec = dict(student=student, in_chans=in_chans, size=size, batch=batch, classes=classes, mode=mode)
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", json.dumps(spec), "--steps", str(args.steps), "--device", args.device],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = {mode: min(runs, key=lambda r: r["step_ms"]) for mode, runs in results.items()}
        peak = {mode: min(r["peak_mb"] for r in runs) for mode, runs in results.items()}
        if args.device == "cpu":  # activations only: subtract what the process held before the first step
            built = min(r["built_mb"] for runs in results.values() for r in runs)
            peak = {mode: value - built for mode, value in peak.items()}
        j, s = best["joint"]["step_ms"], best["sequential"]["step_ms"]
        print(
            f"| {student} | {in_chans}x{size}x{size}, {batch} | {peak['joint']:.0f} | {peak['sequential']:.0f} "
            f"| {peak['sequential'] / peak['joint']:.2f} | {j:.0f} | {s:.0f} | {s / j:.2f} |",
            flush=True,
        )
    if args.device == "cpu":
        print("\n(CPU memory: peak resident set minus the process's size before the first step.)")


if __name__ == "__main__":
    main()
