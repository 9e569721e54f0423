"""A validation split carved out of the training set (``data.val_split``).

Model selection (the best epoch, EMA or final weights) must not look at the test set:
the test accuracy of weights chosen on it is biased upwards. The validation images are
training images held out from training and read with the test set's transforms (no
random crops or flips), so that their accuracy is measured like the test accuracy.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from gpd.data.augment import PILTransformDataset
from gpd.data.labels import dataset_targets
from gpd.data.tensor_dataset import TensorImageDataset
from gpd.errors import DataError


def val_count(val_split: float, total: int) -> int:
    """The number of validation samples: ``val_split`` is a fraction in (0, 1) or a count >= 1."""
    if val_split <= 0 or (val_split >= 1 and val_split != int(val_split)):
        raise DataError(f"data.val_split must be a fraction in (0, 1) or a whole number of samples, got {val_split:g}")
    count = round(val_split * total) if val_split < 1 else int(val_split)
    if not 1 <= count < total:
        raise DataError(
            f"data.val_split={val_split:g} holds out {count} of the {total} training samples; "
            "it must leave at least one sample for validation and one for training"
        )
    return count


def stratified_split(targets: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), both sorted: ``count`` samples held out with
    each class in proportion to its size (largest remainders, ties to the smaller class
    index), drawn by a permutation seeded by ``seed``."""
    total = len(targets)
    classes, sizes = torch.unique(targets, return_counts=True)
    quotas = sizes.double() * count / total
    take = quotas.floor().long()
    remainders = (quotas - take).tolist()
    for k in sorted(range(len(classes)), key=lambda k: (-remainders[k], k))[: count - int(take.sum())]:
        take[k] += 1
    gen = torch.Generator().manual_seed(seed)
    held_out = []
    for label, n in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(targets == label).flatten()
        held_out.append(members[torch.randperm(len(members), generator=gen)[:n]])
    val = torch.cat(held_out).sort().values
    keep = torch.ones(total, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def evaluation_view(train: Dataset, test: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> Dataset:
    """The training samples read as the test set reads its own (no augmentation)."""
    if isinstance(train, Subset):
        return Subset(evaluation_view(train.dataset, test, mean, std), train.indices)
    from gpd.data.hf_text import TokenizedText  # here: hf_text imports the bundle, which imports this module

    if isinstance(train, TokenizedText | TensorDataset):  # text is never augmented, nor torch's tensor pairs
        return train
    if isinstance(train, TensorImageDataset):
        view = copy.copy(train)
        view.crop_padding, view.hflip = 0, False
        return view
    if isinstance(train, PILTransformDataset):  # timm's pipeline trains; the test set is a tensor set
        size = test.size if isinstance(test, TensorImageDataset) else None
        images = train.images.permute(0, 3, 1, 2)
        return TensorImageDataset(images, train.targets, mean, std, train.classes, size)
    if hasattr(train, "transform") and hasattr(test, "transform"):  # ImageFolder, Hugging Face splits
        copied = copy.copy(train)
        copied.transform = test.transform
        return copied
    raise DataError(
        f"data.val_split: cannot read the training set ({type(train).__name__}) without its augmentation; "
        "hold out the validation images as a separate data set instead"
    )


def take(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The samples at ``indices``: a compact copy for tensor sets, a Subset otherwise."""
    return dataset.subset(indices) if isinstance(dataset, TensorImageDataset) else Subset(dataset, indices.tolist())


def split_validation(
    train: Dataset, test: Dataset, val_split: float, seed: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Dataset, Dataset]:
    """(the training set without the held-out samples, the validation set)."""
    targets = dataset_targets(train)
    count = val_count(val_split, len(targets))
    train_idx, val_idx = stratified_split(targets, count, seed)
    return take(train, train_idx), take(evaluation_view(train, test, mean, std), val_idx)


def split_validation_plain(
    train: Dataset, test: Dataset, val_split: float, seed: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Dataset, Dataset]:
    """As :func:`split_validation`, for sets without one label per sample (segmentation masks):
    the held-out samples are the first of a permutation seeded by ``seed``, not stratified."""
    total = len(train)  # type: ignore[arg-type]
    count = val_count(val_split, total)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:count].sort().values, order[count:].sort().values
    return take(train, train_idx), take(evaluation_view(train, test, mean, std), val_idx)
