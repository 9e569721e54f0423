"""Training-step cost of Channel-Branch Reparameterization (six-branch blocks).

Measures, side by side in one run, the median training-step time and the peak
resident memory of a student trained alone and with GPD, each with and without
branches. Each configuration runs in its own process so peak memory is its own.

    .venv/bin/python benchmarks/branches.py [--steps 20] [--threads 2]
    .venv/bin/python benchmarks/branches.py --paths   # the cost model of gpd.branches.paths against measurement

``--paths`` times one block's forward + backward (channels_last, fp32) with branches 3 and 5
merged into the kernel and with each run on the batch, on block shapes of the bundled
pairs, and reports the path the cost model picks next to the measured faster one.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = [
    # (student, in_chans, image size, batch)
    ("resnet8", 1, 28, 128),
    ("resnet20", 3, 32, 64),
]


def worker(
    student: str, in_chans: int, size: int, batch: int, gpd_on: bool, branches: str, steps: int, threads: int
) -> dict:
    import torch

    from gpd.distill import Distiller
    from gpd.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(student, num_classes=10, in_chans=in_chans)
    distiller = Distiller(model, dynamic_teacher=gpd_on, input_size=(in_chans, size, size), branches=branches)
    distiller.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, in_chans, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for step in range(steps + 3):
        started = time.perf_counter()
        loss = distiller(x, y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - started)
    return {
        "step_ms": 1000 * statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


PATH_SHAPES = [
    # (channels, map size, batch): D's and the student's blocks of the ResNet pair at 112/224 px, the CIFAR pair
    (1024, 4, 16),
    (1024, 4, 64),
    (1024, 7, 16),
    (512, 4, 16),
    (512, 7, 16),
    (512, 7, 64),
    (256, 14, 16),
    (256, 8, 32),
    (128, 32, 32),
    (1024, 1, 8),
    (512, 2, 8),
]


def time_paths(threads: int, repeats: int = 3) -> None:
    """Measured forward + backward of each composed branch on both paths, next to the cost model's pick."""
    import torch

    from gpd.branches import OREPAConv2d
    from gpd.branches import orepa as orepa_module
    from gpd.branches.paths import BlockShape, BranchPaths, branch_costs

    torch.set_num_threads(threads)
    print(
        "| channels | map, batch | branch | model: merged / on batch (weighted MACs) | model picks "
        "| measured ms merged | measured ms on batch | measured faster | agree |"
    )
    print("|---" * 9 + "|")
    for channels, hw, batch in PATH_SHAPES:
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        block = OREPAConv2d.from_conv(conv).to(memory_format=torch.channels_last)
        x = torch.randn(batch, channels, hw, hw).contiguous(memory_format=torch.channels_last)
        costs = branch_costs(BlockShape(channels, channels, 1, batch * hw * hw))
        for branch, on_batch in (("b3", BranchPaths(False, True)), ("b5", BranchPaths(True, False))):
            measured = {}
            for label, paths in (("merged", BranchPaths(True, True)), ("on batch", on_batch)):
                orepa_module.choose_paths = lambda shape, path="auto", paths=paths: paths
                times = []
                for _ in range(repeats + 1):
                    block.zero_grad(set_to_none=True)
                    started = time.process_time()
                    block(x).sum().backward()
                    times.append(time.process_time() - started)
                measured[label] = 1000 * statistics.median(times[1:])
            merged_cost, batch_cost = costs[branch]
            pick = "merged" if merged_cost <= batch_cost else "on batch"
            faster = min(measured, key=measured.get)
            close = abs(measured["merged"] - measured["on batch"]) <= 0.1 * min(measured.values())
            print(
                f"| {channels} | {hw}x{hw}, {batch} | {branch} | {merged_cost / 1e9:.2f} / {batch_cost / 1e9:.2f} G "
                f"| {pick} | {measured['merged']:.0f} | {measured['on batch']:.0f} | {faster} "
                f"| {'yes' if pick == faster else ('within 10%' if close else 'no')} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", action="store_true", help="check the path cost model against measurement")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paths:
        time_paths(args.threads)
        return
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker), steps=args.steps, threads=args.threads)))
        return
    print(
        "| student | input, batch | mode | step ms, no branches | step ms, branches | time ratio | peak RSS MB, no branches | peak RSS MB, branches |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for student, in_chans, size, batch in CASES:
        for gpd_on in (False, True):
            row = {}
            for branches in ("none", "orepa"):
                spec = dict(
                    student=student, in_chans=in_chans, size=size, batch=batch, gpd_on=gpd_on, branches=branches
                )
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        json.dumps(spec),
                        "--steps",
                        str(args.steps),
                        "--threads",
                        str(args.threads),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row[branches] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {student} | {in_chans}x{size}x{size}, {batch} | {'GPD r=2' if gpd_on else 'student alone'} "
                f"| {row['none']['step_ms']:.0f} | {row['orepa']['step_ms']:.0f} "
                f"| {row['orepa']['step_ms'] / row['none']['step_ms']:.2f}x "
                f"| {row['none']['peak_rss_mb']:.0f} | {row['orepa']['peak_rss_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
