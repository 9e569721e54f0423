"""The DeiT recipe's image augmentations, built with timm.

``data.randaugment``, ``data.random_erasing``, ``data.color_jitter`` and
``data.interpolation`` describe an :class:`AugmentRecipe`. When none of them is set the
recipe is inactive and the data sets keep their default pipelines unchanged (the
torchvision ImageNet crop + flip for imagefolder, the fast tensor crop + flip for CIFAR).
When one is set, the training images go through ``timm.data.create_transform``:

* imagefolder: timm's whole training pipeline: random-resized crop (scale 0.08-1) and
  flip, RandAugment / colour jitter, to tensor, normalize, random erasing;
* CIFAR: the same, with CIFAR's own crop (resize if asked, zero-padded random crop, flip)
  in place of the random-resized crop, decoded one image at a time through PIL.

Random erasing fills with per-pixel normal noise (timm's ``re_mode='pixel'``, one region),
as DeiT does. timm leaves colour jitter out when RandAugment is on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

DEFAULT_INTERPOLATION = "bilinear"


@dataclass(frozen=True)
class AugmentRecipe:
    """timm augmentations of the training images; inactive (all unset) by default."""

    randaugment: str | None = None  # timm auto_augment string, e.g. "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.0  # probability
    color_jitter: float | None = None
    interpolation: str | None = None  # bilinear | bicubic | nearest

    @classmethod
    def from_config(cls, data: Any) -> AugmentRecipe:
        """The recipe of a ``DataConfig`` (or any object with the same attributes)."""
        return cls(data.randaugment, float(data.random_erasing), data.color_jitter, data.interpolation)

    @property
    def active(self) -> bool:
        return (
            bool(self.randaugment)
            or self.random_erasing > 0
            or self.color_jitter is not None
            or self.interpolation is not None
        )

    @property
    def pil_interpolation(self) -> T.InterpolationMode:
        return T.InterpolationMode(self.interpolation or DEFAULT_INTERPOLATION)

    def train_transform(
        self, size: int, mean: Sequence[float], std: Sequence[float], crop: Sequence[Callable] | None = None
    ) -> T.Compose:
        """timm's training pipeline for ``size`` px images; ``crop`` replaces its random-resized crop and flip."""
        from timm.data import create_transform

        primary, secondary, final = create_transform(
            size,
            is_training=True,
            auto_augment=self.randaugment or None,
            color_jitter=self.color_jitter,  # type: ignore[arg-type]  # None: no jitter (timm annotates float only)
            interpolation=self.interpolation or DEFAULT_INTERPOLATION,
            mean=tuple(mean),
            std=tuple(std),
            re_prob=self.random_erasing,
            re_mode="pixel",
            re_count=1,
            separate=True,
        )
        first = list(crop) if crop is not None else list(primary.transforms)
        return T.Compose([*first, *secondary.transforms, *final.transforms])

    def cifar_crop(self, size: int, native: int, padding: int, flip: bool) -> list[Callable]:
        """CIFAR's crop on PIL images: resize to ``size`` if needed, zero-padded random crop, flip."""
        steps: list[Callable] = []
        if size != native:
            steps.append(T.Resize((size, size), interpolation=self.pil_interpolation))
        if padding:
            steps.append(T.RandomCrop(size, padding=padding))
        if flip:
            steps.append(T.RandomHorizontalFlip())
        return steps


class PILTransformDataset(Dataset[tuple[Tensor, int]]):
    """In-memory uint8 images, each turned into a PIL image and passed through ``transform``.

    For the timm pipelines, which work on PIL images one at a time (the default CIFAR
    pipeline stays on :class:`~gpd.data.tensor_dataset.TensorImageDataset`'s batched path).
    """

    def __init__(
        self, images: Tensor, targets: Tensor, transform: Callable[[Image.Image], Tensor], classes: Sequence[str] = ()
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a (N, 3, H, W) uint8 tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images.permute(0, 2, 3, 1).contiguous()  # (N, H, W, C): what PIL reads
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.transform = transform
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = Image.fromarray(self.images[index].numpy())
        return self.transform(image), int(self.targets[index])
