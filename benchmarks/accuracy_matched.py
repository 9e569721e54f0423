"""The accuracy benchmark's cost-matched baselines: the plain student given GPD's compute or GPD's time.

GPD's step costs several plain steps, so a baseline at equal epochs gets a fraction of GPD's
training compute. Two more baselines answer whether GPD pays for that compute:

* **equal compute** (slug ``<plain>_flops``): the plain run's epochs times the measured
  ratio of training FLOPs per step, GPD step over plain step (benchmarks/step_flops.py:
  torch's FlopCounterMode over one step of the objects ``gpd train`` builds from the two
  configs), rounded to the nearest epoch. Both runs take the same batch, so FLOPs per step
  times steps is the training compute; the evaluation passes are not training compute.
* **equal time** (slug ``<plain>_time``): the plain run's epochs times the ratio of seconds
  per training step, GPD step over plain step, timed side by side on this machine when the
  suite starts (benchmarks/step_times.py: alternating steps in one process, medians), rounded
  to the nearest epoch. Whole runs are not used as the clock: on a shared machine a run that
  meets a busy minute looks several times slower than its baseline. ``gpd train`` is given
  those epochs, so its cosine schedule is sized to the budget and ends at its minimum, rather
  than being cut off by a clock mid-schedule. The whole runs' times are reported next to it.

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
TIME_RATIOS_FILE = "time_ratios.json"


def matched_epochs(epochs: int, ratio: float) -> int:
    """Epochs of the plain run that match ``epochs`` of a run costing ``ratio`` times as much per epoch."""
    if ratio <= 0:
        raise ValueError(f"a cost ratio must be positive, got {ratio}")
    return max(1, round(epochs * ratio))


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


class MeasuredRatios:
    """Measured cost ratios (GPD step / plain step) by scenario key ("fashion_mnist/scratch"), kept
    in a JSON file of the work dir so that a resumed suite keeps its plan.

    ``measure(gpd, plain)``: the costs of the two steps, each run given as (config, overrides);
    ``unit`` names them in the file (``gpd_<unit>``, ``plain_<unit>``)."""

    unit = "cost"

    def __init__(self, path: Path | None, measure: Callable[..., tuple[float, float]]) -> None:
        self.path = path
        self.measure = measure
        self.values: dict[str, dict[str, float]] = {}
        if path is not None and path.is_file():
            self.values = json.loads(path.read_text())

    def ratio(self, key: str, gpd: tuple[str, list[str]], plain: tuple[str, list[str]]) -> float:
        if key not in self.values:
            with contextlib.redirect_stdout(io.StringIO()):  # the builders' log ("random weights stand in")
                gpd_cost, plain_cost = self.measure(gpd, plain)
            self.values[key] = {"ratio": gpd_cost / plain_cost, f"gpd_{self.unit}": gpd_cost,
                                f"plain_{self.unit}": plain_cost}  # fmt: skip
        return self.values[key]["ratio"]

    def save(self) -> None:
        if self.path is not None and self.values:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.values, indent=1))


class FlopRatios(MeasuredRatios):
    """Training FLOPs per step, GPD / plain (benchmarks/step_flops.py), in ``flop_ratios.json``."""

    unit = "flops"

    def __init__(self, path: Path | None, measure: Callable[..., tuple[float, float]] | None = None) -> None:
        super().__init__(path, measure or measure_flops)


class TimeRatios(MeasuredRatios):
    """Seconds per training step, GPD / plain, timed side by side with ``threads`` threads
    (benchmarks/step_times.py), in ``time_ratios.json``."""

    unit = "step_seconds"

    def __init__(
        self, path: Path | None, threads: int | None = None, measure: Callable[..., tuple[float, float]] | None = None
    ) -> None:
        super().__init__(path, measure or functools.partial(measure_step_seconds, threads=threads))


def measure_flops(gpd: tuple[str, list[str]], plain: tuple[str, list[str]]) -> tuple[float, float]:
    """Training FLOPs per step of the two runs (benchmarks/step_flops.py)."""
    from step_flops import step_flops

    return step_flops(*gpd), step_flops(*plain)


def measure_step_seconds(
    gpd: tuple[str, list[str]], plain: tuple[str, list[str]], threads: int | None = None
) -> tuple[float, float]:
    """Seconds per training step of the two runs, timed alternately (benchmarks/step_times.py)."""
    from step_times import step_seconds

    return step_seconds(gpd, plain, threads=threads)
