"""The class labels of a data set, read without decoding its images.

Used twice before training starts: to check once that every label is a valid class
index (so the losses need not read labels back from the device at every step), and to
stratify the validation split (:mod:`gpd.data.validation`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from gpd.errors import DataError


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """Every sample's class index as a (N,) int64 tensor, in dataset order.

    Reads the label column where the dataset keeps one (gpd's tensor sets, torchvision's
    ImageFolder, a Hugging Face split); any other dataset is iterated once.
    """
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    column = _label_column(dataset)
    if column is not None:
        return torch.as_tensor(column, dtype=torch.long).reshape(-1)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)  # type: ignore[arg-type]


def _label_column(dataset: Dataset) -> Any:
    split, key = getattr(dataset, "split", None), getattr(dataset, "label_key", None)
    if split is not None and key is not None:  # gpd.data.hf_disk.HFImageDataset
        return split[key]
    return getattr(dataset, "targets", None)  # tensor sets, ImageFolder, torchvision's sets


def check_labels(dataset: Dataset, num_classes: int, what: str) -> None:
    """Raise a one-line DataError unless every label of ``dataset`` lies in [0, num_classes)."""
    targets = dataset_targets(dataset)
    if not len(targets):
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"the {what} labels range over [{low}, {high}] but the data set has {num_classes} classes; "
            f"labels must be class indices in [0, {num_classes})"
        )
