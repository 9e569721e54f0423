"""Hugging Face ``datasets`` saved to disk (``DatasetDict.save_to_disk``) as a gpd data set.

``data.name=hf_disk data.root=FOLDER`` reads a folder written by ``save_to_disk`` with a
``train`` split and a ``test`` (or ``validation``) split; ``data.image_key`` and
``data.label_key`` name the columns (default ``image`` and ``label``). Images are PIL
images (the ``Image`` feature) or arrays; greyscale images give 1 channel, everything
else is converted to RGB. The class names come from a ``ClassLabel`` feature, else the
labels must be the integers 0..K-1. The normalisation statistics are measured on up to
2000 training images. A set with a text column instead of images is read by
:mod:`gpd.data.hf_text`. ``datasets`` is an optional dependency (``pip install 'gpd[hf]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset

from gpd.data.bundle import DataBundle
from gpd.data.hf_text import TextOptions, build_text_bundle
from gpd.errors import DataError

TEST_SPLITS = ("test", "validation")
STATS_SAMPLES = 2000


class HFImageDataset(Dataset):
    """One split of a Hugging Face data set: ``(transform(image), label)`` per sample."""

    def __init__(self, split: Any, image_key: str, label_key: str, mode: str, transform: T.Compose) -> None:
        self.split, self.image_key, self.label_key, self.mode, self.transform = (
            split,
            image_key,
            label_key,
            mode,
            transform,
        )

    def __len__(self) -> int:
        return len(self.split)

    def _row(self, index: int) -> tuple[Image.Image, int]:
        row = self.split[int(index)]  # one read: the row's image is decoded once
        value = row[self.image_key]
        picture = value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))
        return picture.convert(self.mode), int(row[self.label_key])

    def image(self, index: int) -> Image.Image:
        return self._row(index)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        picture, label = self._row(index)
        return self.transform(picture), label


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.name=hf_disk needs the Hugging Face datasets package: pip install 'gpd[hf]' (or pip install datasets)"
        ) from None
    return datasets


def _class_names(split: Any, label_key: str) -> tuple[str, ...]:
    feature = split.features.get(label_key)
    names = getattr(feature, "names", None)
    if names:
        return tuple(str(n) for n in names)
    labels = sorted({int(v) for v in split[label_key]})
    if labels != list(range(len(labels))):
        raise DataError(
            f"hf_disk: the labels in column {label_key!r} must be the integers 0..K-1 or a ClassLabel, got {labels[:10]}"
        )
    return tuple(str(i) for i in labels)


def _statistics(dataset: HFImageDataset, size: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of up to STATS_SAMPLES training images (evenly spaced)."""
    to_tensor = T.Compose([T.Resize(size), T.ToTensor()])
    picks = np.linspace(0, len(dataset) - 1, num=min(len(dataset), STATS_SAMPLES)).astype(int)
    pixels = torch.stack([to_tensor(dataset.image(i)) for i in picks])
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_splits(root: Path | None) -> tuple[Any, Any]:
    """The train and test (or validation) splits of the DatasetDict saved in ``root``."""
    if root is None:
        raise DataError("hf_disk needs data.root: the folder a datasets.DatasetDict.save_to_disk() call wrote")
    datasets = _import_datasets()
    try:
        data = datasets.load_from_disk(str(root))
    except FileNotFoundError:
        raise DataError(f"hf_disk: {root} is not a folder written by datasets' save_to_disk()") from None
    except Exception as err:
        raise DataError(f"hf_disk: cannot read {root}: {' '.join(str(err).split())}") from None
    if not hasattr(data, "keys"):
        raise DataError(f"hf_disk: {root} holds a single split; save a DatasetDict with train and test splits")
    test_split = next((s for s in TEST_SPLITS if s in data), None)
    if "train" not in data or test_split is None:
        raise DataError(f"hf_disk: {root} has the splits {sorted(data)}; it needs train and test (or validation)")
    return data["train"], data[test_split]


def build_hf_disk_bundle(
    root: Path | None, image_key: str, label_key: str, augment: bool, image_size: int | None,
    text: TextOptions | None = None,
) -> DataBundle:  # fmt: skip
    """An image set (a column ``image_key``), or a text set (``text.text_key``; :mod:`gpd.data.hf_text`)."""
    train_split, test_data = load_splits(root)
    columns = train_split.column_names
    text = text or TextOptions()
    if text.required and text.text_key not in columns and image_key in columns:
        raise DataError(
            f"hf_disk: the student is a text model but {root} holds images (column {image_key!r}) and no text "
            f"column {text.text_key!r} (data.text_key); use an image model, or set data.text_key"
        )
    if text.required or (image_key not in columns and text.text_key in columns):
        if label_key not in columns:
            raise DataError(f"hf_disk: no column {label_key!r} (data.label_key); the columns are {columns}")
        classes = _class_names(train_split, label_key)
        return build_text_bundle(train_split, test_data, label_key, classes, text)
    if image_key not in columns and label_key in columns:
        raise DataError(
            f"hf_disk: no column {image_key!r} (data.image_key) nor {text.text_key!r} (data.text_key); "
            f"the columns are {columns}"
        )
    train, test, count, chans, size, mean, std, names = _build_images(
        train_split, test_data, image_key, label_key, augment, image_size
    )
    return DataBundle(train, test, count, chans, size, mean, std, "hf_disk", False, names)


def build_hf_disk(
    root: Path | None, image_key: str, label_key: str, augment: bool, image_size: int | None
) -> tuple[Dataset, Dataset, int, int, tuple[int, int, int], tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    """``(train, test, num_classes, in_chans, input_size, mean, std, class_names)`` of a saved image set."""
    return _build_images(*load_splits(root), image_key, label_key, augment, image_size)


def _build_images(
    train_split: Any, test_data: Any, image_key: str, label_key: str, augment: bool, image_size: int | None
) -> tuple[Dataset, Dataset, int, int, tuple[int, int, int], tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    for key, what in ((image_key, "data.image_key"), (label_key, "data.label_key")):
        if key not in train_split.column_names:
            raise DataError(f"hf_disk: no column {key!r} ({what}); the columns are {train_split.column_names}")
    classes = _class_names(train_split, label_key)
    first = train_split[0][image_key]
    first = first if isinstance(first, Image.Image) else Image.fromarray(np.asarray(first))
    mode = "L" if first.mode in ("L", "1", "I;16", "I", "F") else "RGB"
    size = (image_size, image_size) if image_size else (first.height, first.width)
    probe = HFImageDataset(train_split, image_key, label_key, mode, T.Compose([]))
    mean, std = _statistics(probe, size)
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    train_tf = [T.Resize(size)]
    if augment:
        train_tf += [T.RandomCrop(size, padding=max(1, size[0] // 8)), T.RandomHorizontalFlip()]
    train = HFImageDataset(train_split, image_key, label_key, mode, T.Compose([*train_tf, *norm]))
    test = HFImageDataset(test_data, image_key, label_key, mode, T.Compose([T.Resize(size), *norm]))
    chans = 1 if mode == "L" else 3
    return train, test, len(classes), chans, (chans, *size), mean, std, classes
