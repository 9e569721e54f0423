"""The accuracy benchmark's cost-matched baselines: the plain student given GPD's compute or GPD's time.

GPD's step costs several plain steps, so a baseline at equal epochs gets a fraction of GPD's
training compute. Two more baselines answer whether GPD pays for that compute:

* **equal compute** (slug ``<plain>_flops``): the plain run's epochs times the measured
  ratio of training FLOPs per step, GPD step over plain step (benchmarks/step_flops.py:
  torch's FlopCounterMode over one step of the objects ``gpd train`` builds from the two
  configs), rounded to the nearest epoch. Both runs take the same batch, so FLOPs per step
  times steps is the training compute; the evaluation passes are not training compute.
* **equal time** (slug ``<plain>_time``): as many epochs as the plain student trains in the
  GPD run's time on the same machine, in the same suite. The calibration is the equal-epoch
  baseline itself, which runs before it: epochs = the GPD run's training-plus-evaluation
  seconds (metrics.csv) / the plain run's seconds per epoch, rounded to the nearest epoch
  (at least 1). ``gpd train`` is then given those epochs, so its cosine schedule is sized to
  the budget and ends at its minimum, rather than being cut off by a clock mid-schedule.
  The figures behind the choice are kept in ``time_budgets.json`` of the work dir.

Both keep the schedule's shape: the same scheduler, the warm-up the same fraction of the run
(``train.warmup_epochs`` scaled by the epoch ratio), the same data order in every epoch
(``gpd train`` draws each epoch's order from (train.seed, epoch) alone, so the first epochs
of the longer run see exactly the equal-epoch baseline's batches).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from collections.abc import Callable
from pathlib import Path

# scenario: (the GPD run's slug, the plain run's slug); the matched runs are <plain>_flops and <plain>_time
MATCHED_SCENARIOS = {"scratch": ("scratch_gpd", "scratch"), "kd": ("kd_gpd", "kd")}
KINDS = {"flops": "equal compute", "time": "equal time"}
FLOP_RATIOS_FILE = "flop_ratios.json"
TIME_BUDGETS_FILE = "time_budgets.json"


def matched_epochs(epochs: int, ratio: float) -> int:
    """Epochs of the plain run that match ``epochs`` of a run costing ``ratio`` times as much per epoch."""
    if ratio <= 0:
        raise ValueError(f"a cost ratio must be positive, got {ratio}")
    return max(1, round(epochs * ratio))


def time_matched_epochs(gpd_seconds: float, plain_epoch_seconds: float) -> int:
    """Epochs of the plain run that take the GPD run's seconds, at the plain run's measured seconds per epoch."""
    return matched_epochs(1, gpd_seconds / plain_epoch_seconds)


def matched_overrides(overrides: list[str], epochs: int, base_epochs: int, base_warmup: float) -> list[str]:
    """``overrides`` for ``epochs`` instead of ``base_epochs``, the warm-up scaled to the same fraction of the run."""
    kept = [o for o in overrides if not o.startswith(("train.epochs=", "train.warmup_epochs="))]
    warmup = base_warmup * epochs / base_epochs
    return [*kept, f"train.epochs={epochs}", f"train.warmup_epochs={warmup:g}"]


@functools.cache
def config_warmup(config: str) -> float:
    """``train.warmup_epochs`` of a bundled config."""
    from gpd.config import load_config

    return float(load_config(config).train.warmup_epochs)


class FlopRatios:
    """Measured FLOP ratios (GPD step / plain step) by scenario key ("fashion_mnist/scratch"),
    kept in ``flop_ratios.json`` of the work dir so that a resumed suite keeps its plan.

    ``measure(gpd, plain)``: FLOPs of the two steps, each given as (config, overrides)."""

    def __init__(self, path: Path | None, measure: Callable[..., tuple[float, float]] | None = None) -> None:
        self.path = path
        self.measure = measure or measure_flops
        self.values: dict[str, dict[str, float]] = {}
        if path is not None and path.is_file():
            self.values = json.loads(path.read_text())

    def ratio(self, key: str, gpd: tuple[str, list[str]], plain: tuple[str, list[str]]) -> float:
        if key not in self.values:
            with contextlib.redirect_stdout(io.StringIO()):  # the builders' log ("random weights stand in")
                gpd_flops, plain_flops = self.measure(gpd, plain)
            self.values[key] = {"ratio": gpd_flops / plain_flops, "gpd_flops": gpd_flops, "plain_flops": plain_flops}
        return self.values[key]["ratio"]

    def save(self) -> None:
        if self.path is not None and self.values:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.values, indent=1))


def measure_flops(gpd: tuple[str, list[str]], plain: tuple[str, list[str]]) -> tuple[float, float]:
    """Training FLOPs per step of the two runs (benchmarks/step_flops.py)."""
    from step_flops import step_flops

    return step_flops(*gpd), step_flops(*plain)


def time_budget(gpd_seconds: list[float], plain_seconds: list[float]) -> dict[str, float]:
    """The time-matched epochs from the GPD run's and the equal-epoch baseline's per-epoch seconds
    (metrics.csv: training and evaluation of each epoch)."""
    total = sum(gpd_seconds)
    per_epoch = sum(plain_seconds) / len(plain_seconds)
    return {"epochs": time_matched_epochs(total, per_epoch), "gpd_seconds": total, "plain_epoch_seconds": per_epoch}
