"""How many CPU threads a training process uses (``train.threads``).

torch starts one OpenMP thread per core. When another process keeps a core busy,
those threads wait for each other at every parallel region, and a step can take far
longer than with one thread less (measured on a 2-core machine: 426 s instead of about
270 s for the default job with one busy process). ``auto`` therefore counts the cores
this process may run on, subtracts the ones other processes kept busy over a short
sample of /proc/stat, and shares the rest among the training processes of this machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from gpd.errors import ConfigError

SAMPLE_SECONDS = 0.25


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(sample_seconds: float = SAMPLE_SECONDS, stat: Path = Path("/proc/stat")) -> float:
    """How many cores were busy over ``sample_seconds`` (0 where /proc/stat cannot be read)."""

    def totals() -> tuple[int, int] | None:
        try:
            fields = stat.read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        values = [int(v) for v in fields[:8]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    first = totals()
    time.sleep(sample_seconds)
    second = totals()
    if first is None or second is None or second[0] <= first[0]:
        return 0.0
    total, idle = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (1.0 - idle / total)


def auto_threads(local_processes: int = 1, busy: float | None = None) -> int:
    """The threads for each of ``local_processes`` training processes: the cores the other
    processes leave free (a core counts as busy above half its time), at least one."""
    cores = usable_cores()
    taken = busy_cores() if busy is None else busy
    free = cores - int(taken + 0.5)
    return max(1, free // max(local_processes, 1))


def resolve_threads(setting: str, local_processes: int = 1) -> int:
    """The number of ``train.threads``: ``auto`` or a positive integer."""
    if setting == "auto":
        return auto_threads(local_processes)
    try:
        count = int(setting)
    except ValueError:
        count = 0
    if count <= 0:
        raise ConfigError(f"train.threads must be auto or a positive number of threads, got '{setting}'")
    return count


def apply_threads(setting: str, local_processes: int = 1) -> str:
    """Set torch's CPU threads for ``train.threads`` (a process's entry point calls this, not the
    library); returns why that many, for the run's log. An OMP_NUM_THREADS in the environment
    wins over ``auto``: whoever set it has decided."""
    if setting == "auto" and os.environ.get("OMP_NUM_THREADS"):
        return "OMP_NUM_THREADS"
    torch.set_num_threads(resolve_threads(setting, local_processes))
    return "train.threads=auto: the cores other processes leave free" if setting == "auto" else "train.threads"
