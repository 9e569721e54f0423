"""Training FLOPs of one ``gpd train`` step, counted on the very objects ``gpd train`` builds.

The accuracy benchmark gives its compute-matched baselines the epochs of the GPD run times
the ratio of training FLOPs per step (GPD step / plain step). Both steps are counted here
the way benchmarks/speed.py counts them (its ``flop_counter``: torch's FlopCounterMode,
convolutions, matrix products and attention; elementwise work, normalisation and the
optimizer count zero), but on the run's own config: the bundled config and overrides are
loaded as ``gpd train`` loads them, the :class:`~gpd.training.trainer.Trainer` builds data,
student, dynamic teacher, static teacher and KD method, and one step of its loop
(:meth:`~gpd.training.loop.TrainLoop.train_step`: forward, backward, optimizer) is counted.
The policy is a dry run's with a batch of 8 images at the data's own size: FLOPs grow
linearly with the batch, so the ratio of two steps does not depend on it; missing files
(a static teacher not trained yet) get random weights, which cost the same FLOPs.

    python benchmarks/step_flops.py fashion_mnist/scratch_gpd fashion_mnist/scratch   # FLOPs and their ratio
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
FLOP_BATCH = 8  # images per counted step; the ratio does not depend on it


def step_flops(config: str, overrides: list[str]) -> float:
    """FLOPs of one training step of ``gpd train CONFIG OVERRIDES`` (a batch of FLOP_BATCH images)."""
    import torch

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    from speed import flop_counter

    from gpd.config import load_config
    from gpd.inputs import batch_to_device
    from gpd.training.policy import DRY_RUN
    from gpd.training.trainer import Trainer

    # the data set's own images (no size cap), a batch of FLOP_BATCH, random weights for missing files
    policy = replace(DRY_RUN, name="FLOP count", max_image_size=None, max_batch_per_process=FLOP_BATCH, data_batches=1)
    kept = [o for o in overrides if not o.startswith(("output_dir=", "train.epochs="))]
    cfg = load_config(config, [*kept, "train.device=cpu", "train.channels_last=false"])
    state = torch.random.get_rng_state()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, Path(tmp) / "run", dry_run=policy)
            loop = trainer.loop
            x, y = next(iter(loop.loaders.train))
            x = batch_to_device(x, loop.device, loop.memory_format)
            loop.train_step(x, y, 0.0, "warm-up step")  # lazy state (optimizer moments, branch paths) first
            with flop_counter() as counter:
                loop.train_step(x, y, 0.5, "counted step")
    finally:
        torch.random.set_rng_state(state)
    return float(counter.get_total_flops())


def flop_ratio(gpd: tuple[str, list[str]], plain: tuple[str, list[str]]) -> float:
    """Training FLOPs per step of the GPD run over those of its plain baseline (same batch)."""
    return step_flops(*gpd) / step_flops(*plain)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: step_flops.py GPD_CONFIG PLAIN_CONFIG [OVERRIDE ...]", file=sys.stderr)
        return 2
    overrides = argv[2:]
    gpd, plain = step_flops(argv[0], overrides), step_flops(argv[1], overrides)
    print(f"{argv[0]}: {gpd / 1e9:.3f} GFLOP per step of {FLOP_BATCH}")
    print(f"{argv[1]}: {plain / 1e9:.3f} GFLOP per step of {FLOP_BATCH}")
    print(f"ratio {gpd / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
