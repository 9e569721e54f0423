"""The full training state in one file, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds everything that decides what the next step computes: D's weights
and the student's BatchNorm statistics, the optimizer, scheduler, gradient scaler and
EMA states, the epoch and step, the best metric, and the random number generators of
torch, CUDA, numpy and Python (per process). The data order needs no state of its own:
each epoch's shuffle is seeded by (seed, epoch). Random states are stored as tensors
and plain numbers, so the restricted unpickler accepts them and no code runs on load.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpd.errors import CheckpointError, first_line
from gpd.training.run_dir import atomic_torch_save

CHECKPOINT_FORMAT = "gpd-checkpoint/2"


def capture_rng() -> dict[str, Any]:
    """The state of every random number generator this process uses."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": py_gauss},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint in place."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with one-line errors."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: there is no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, garbage, or objects the safe unpickler refuses
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(err)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a gpd training checkpoint of format {CHECKPOINT_FORMAT} (found {found})")
    return state
