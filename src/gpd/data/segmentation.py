"""Semantic segmentation data: a sample is an image and a mask of per-pixel class indices.

Every segmentation set of gpd returns ``(image, mask)``: ``image`` a float tensor
(C, H, W), normalised; ``mask`` an int64 tensor (H, W) whose values are class indices
``0 .. num_classes - 1`` or :data:`IGNORE_INDEX` for pixels without a label (borders,
"don't care" regions), which the losses and metrics skip. The sets are described in
docs/segmentation.md ("Data").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from gpd.data.seg_transforms import apply_joint
from gpd.errors import ArgumentError

# The label of unlabelled pixels: the value PASCAL VOC and Cityscapes masks use, and the
# default ``ignore_index`` of the segmentation losses.
IGNORE_INDEX = 255


@dataclass
class SegmentationBundle:
    """A train/test pair of segmentation sets plus what models and transforms must agree on."""

    train: Dataset
    test: Dataset
    num_classes: int  # including the background class where there is one
    in_chans: int
    input_size: tuple[int, int, int]  # (C, H, W) of a sample as the model sees it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    class_names: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX


class SegmentationTensorDataset(Dataset):
    """Images (N, C, H, W, uint8) and masks (N, H, W, uint8) held in memory, read through a joint transform."""

    def __init__(
        self, images: Tensor, masks: Tensor, transform: Callable[..., object], class_names: tuple[str, ...] = ()
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ArgumentError(f"images must be a (N, C, H, W) uint8 tensor, got {tuple(images.shape)} {images.dtype}")
        if masks.dim() != 3 or masks.shape[0] != images.shape[0] or masks.shape[1:] != images.shape[2:]:
            raise ArgumentError(
                f"masks must be (N, H, W) matching images {tuple(images.shape)}, got {tuple(masks.shape)}"
            )
        self.images = images
        self.masks = masks
        self.transform = transform
        self.class_names = class_names

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return apply_joint(self.transform, self.images[index], self.masks[index])
