"""``gpd eval``: the test accuracy of an exported student, rebuilt from its file alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from gpd.config import load_config
from gpd.data import build_datasets
from gpd.data.augment import AugmentRecipe
from gpd.export import read_student_file, student_from_payload
from gpd.training.evaluate import accuracy
from gpd.training.run_dir import CONFIG_FILE, STUDENT_FILE
from gpd.training.trainer import resolve_device


def evaluate_exported(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``student.pt`` (or a run directory's) on the test split of its data set.

    A run directory's config.yaml supplies the data settings; a bare student.pt
    supplies the data set name it was trained on. ``overrides`` (key=value) can
    change e.g. data.root or train.device.
    """
    path = Path(path)
    student_file = path / STUDENT_FILE if path.is_dir() else path
    payload = read_student_file(student_file)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        cfg = load_config(str(path / CONFIG_FILE), overrides)
    else:
        meta = payload.get("metadata", {})
        defaults = [f"data.name={meta['data']}"] if meta.get("data") else []
        size = meta.get("input_size")
        if size and len(size) == 3:
            defaults.append(f"data.image_size={size[-1]}")
        cfg = load_config(None, defaults + list(overrides or []))
    model = student_from_payload(payload, student_file)
    device = resolve_device(cfg.train.device)
    model.to(device)
    recipe = AugmentRecipe.from_config(cfg.data)  # its interpolation resizes the test images as in training
    data = build_datasets(
        cfg.data.name, root=cfg.data.root, image_size=cfg.data.image_size, augment=False, recipe=recipe
    )
    loader = DataLoader(data.test, batch_size=cfg.train.eval_batch_size)
    with torch.inference_mode():
        acc = accuracy({"student": model}, loader, device)["student"]
    return {
        "path": str(student_file),
        "model": payload["spec"].get("name"),
        "data": data.name,
        "images": len(data.test),
        "accuracy": acc,
    }
