"""Change the normalisation of a built data set: a Hugging Face image processor's mean and std.

An ``hf:`` vision student was trained on images normalised by its image processor's
``image_mean`` / ``image_std``; fine-tuned on another data set it should see the same scale.
The data sets gpd builds normalise in one place each (a tensor set's folded multiply-add, a
torchvision ``Normalize`` in a transform), which :func:`renormalized` replaces.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torchvision.transforms as T
from torch.utils.data import Dataset, Subset

from gpd.data.tensor_dataset import TensorImageDataset
from gpd.errors import DataError


def renormalized(dataset: Dataset, mean: Sequence[float], std: Sequence[float]) -> Dataset:
    """A shallow copy of ``dataset`` whose images are normalised by ``mean`` and ``std`` instead."""
    if isinstance(dataset, Subset):
        return Subset(renormalized(dataset.dataset, mean, std), dataset.indices)
    if isinstance(dataset, TensorImageDataset):
        tensors = copy.copy(dataset)
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        tensors._scale, tensors._shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        return tensors
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, T.Compose) and any(isinstance(t, T.Normalize) for t in transform.transforms):
        out = copy.copy(dataset)
        steps = [T.Normalize(list(mean), list(std)) if isinstance(t, T.Normalize) else t for t in transform.transforms]
        out.transform = T.Compose(steps)  # type: ignore[attr-defined]
        return out
    raise DataError(
        f"cannot apply the image processor's mean and std to a {type(dataset).__name__}; "
        "remove preprocessor_config.json from the student's directory to keep the data set's own"
    )
