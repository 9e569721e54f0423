"""Test accuracy of exported students as saved, and with their BatchNorm statistics recomputed.

A diagnostic for very short runs: BatchNorm's running statistics follow the weights with
momentum 0.1, so after a few steps of large updates they describe weights that no longer
exist, and the test accuracy (which uses them) understates what the weights can do.
Recomputing the statistics as a plain average over the training images (momentum None,
train mode, no gradient) separates the two.

    python scripts/bn_recalibrated_eval.py RUN_DIR_OR_STUDENT_PT [...] [--train-subset 2000]

The training images are the run's data set (student.pt's metadata) without augmentation,
the first ``--train-subset`` of the seeded subset gpd train used for the same number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import gpd
from gpd.data import build_datasets


def accuracy(model: nn.Module, dataset) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=1000):
            correct += int((model(x).argmax(1) == y).sum())
            total += y.numel()
    return 100.0 * correct / total


def recalibrate(model: nn.Module, dataset, batch_size: int = 128) -> None:
    """Replace every BatchNorm's running statistics by their average over ``dataset``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for x, _ in DataLoader(dataset, batch_size=batch_size):
            model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or student.pt files")
    parser.add_argument("--train-subset", type=int, default=None, help="the run's data.train_subset")
    parser.add_argument("--seed", type=int, default=0, help="the run's train.seed (which subset)")
    args = parser.parse_args()
    for path in args.paths:
        student_file = path / "student.pt" if path.is_dir() else path
        model = gpd.load_student(student_file)
        meta = torch.load(student_file, weights_only=True, map_location="cpu").get("metadata", {})
        data = build_datasets(
            meta.get("data", "fashion_mnist"), train_subset=args.train_subset, augment=False, seed=args.seed
        )
        saved = accuracy(model, data.test)
        recalibrate(model, data.train)
        print(
            f"{path}: test {saved:.2f}% as saved, {accuracy(model, data.test):.2f}% with BatchNorm statistics recomputed"
        )


if __name__ == "__main__":
    main()
