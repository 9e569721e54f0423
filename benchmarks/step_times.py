"""Seconds per training step of two ``gpd train`` runs, timed side by side on this machine.

The accuracy benchmark's equal-time baselines train the plain student for the epochs of the
GPD run times the ratio of their seconds per training step (benchmarks/accuracy_matched.py).
Whole runs are a poor clock on a shared machine: one run that meets a busy minute looks
several times slower than its baseline. So both steps are timed here, in one process,
alternating (GPD step, plain step, GPD step, ...) so that any load in the background slows
both alike, and the ratio of their medians is taken.

Each run is built as ``gpd train`` builds it (benchmarks/step_flops.py does the same for FLOPs):
the bundled config and overrides, the :class:`~gpd.training.trainer.Trainer`'s data, student,
dynamic teacher, static teacher and optimizer, one batch of the run's own batch size at the
data's own image size, and :meth:`~gpd.training.loop.TrainLoop.train_step` (forward,
backward, optimizer). A missing static teacher file gets random weights (same time). The
evaluation passes are left out: GPD's evaluates D too, so the ratio slightly flatters the
plain student's budget per epoch of evaluation; the whole runs' times are reported next to it.

    python benchmarks/step_times.py fashion_mnist/scratch_gpd fashion_mnist/scratch train.batch_size=128
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

TIMED_STEPS = 12  # steps of each run, alternating; their median is the run's seconds per step
WARMUP_STEPS = 2  # untimed steps of each run first (lazy state: optimizer moments, allocator, branch paths)


@contextmanager
def step_runner(config: str, overrides: list[str], threads: int | None = None) -> Iterator[Callable[[], float]]:
    """A function that runs one training step of ``gpd train CONFIG OVERRIDES`` and returns its seconds."""

    from gpd.config import load_config
    from gpd.inputs import batch_to_device
    from gpd.training.policy import DRY_RUN
    from gpd.training.trainer import Trainer

    kept = [o for o in overrides if not o.startswith(("output_dir=", "train.epochs="))]
    if threads is not None:
        kept.append(f"train.threads={threads}")
    cfg = load_config(config, [*kept, "train.device=cpu"])
    # the run's own batch and image size, a data set of that one batch, random weights for missing files
    policy = replace(DRY_RUN, name="step timing", max_image_size=None, max_batch_per_process=None, data_batches=1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", dry_run=policy)
        loop = trainer.loop
        x, y = next(iter(loop.loaders.train))
        x = batch_to_device(x, loop.device, loop.memory_format)

        def step() -> float:
            started = time.perf_counter()
            loop.train_step(x, y, 0.5, "timed step")
            return time.perf_counter() - started

        yield step


def step_seconds(
    gpd: tuple[str, list[str]], plain: tuple[str, list[str]], threads: int | None = None, steps: int = TIMED_STEPS
) -> tuple[float, float]:
    """Median seconds per training step of the GPD run and of its plain baseline, timed alternately."""
    import torch

    state = torch.random.get_rng_state()
    try:
        with ExitStack() as stack:
            runners = [stack.enter_context(step_runner(*run, threads=threads)) for run in (gpd, plain)]
            for runner in runners:
                for _ in range(WARMUP_STEPS):
                    runner()
            times: list[list[float]] = [[], []]
            for _ in range(steps):
                for runner, seconds in zip(runners, times):
                    seconds.append(runner())
    finally:
        torch.random.set_rng_state(state)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: step_times.py GPD_CONFIG PLAIN_CONFIG [OVERRIDE ...]", file=sys.stderr)
        return 2
    gpd, plain = step_seconds((argv[0], argv[2:]), (argv[1], argv[2:]))
    print(f"{argv[0]}: {gpd * 1000:.1f} ms per step (median of {TIMED_STEPS})")
    print(f"{argv[1]}: {plain * 1000:.1f} ms per step (median of {TIMED_STEPS})")
    print(f"ratio {gpd / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
