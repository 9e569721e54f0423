"""Joint augmentations of an image and its segmentation mask (torchvision.transforms.v2).

A crop or flip must move a mask's labels with the image's pixels, and a resize must not
invent labels: a mask pixel between a "shirt" and a "bag" pixel is one of them, never the
class whose index lies between. torchvision's v2 transforms do both when the image is a
``tv_tensors.Image`` and the mask a ``tv_tensors.Mask``: one call draws one set of random
parameters for both, resizes masks with nearest-neighbour interpolation, and leaves masks
out of ``ToDtype`` and ``Normalize``. Random parameters come from torch's global RNG, as
for every torchvision transform (seeded per worker by DataLoader).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

# Scale range of the random resized crop: the crop keeps 25-100% of the image's area.
# Segmentation keeps more context than ImageNet classification (whose lower bound is 8%),
# so that a crop still holds whole objects.
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)

JointTransform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[Tensor, Tensor]]


def segmentation_transform(
    size: int | tuple[int, int] | None,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    crop_scale: tuple[float, float] = CROP_SCALE,
    hflip: bool = True,
) -> v2.Compose:
    """The pipeline of one split: a uint8 image and its mask in, a normalised float image out.

    ``train=True``: random resized crop to ``size`` (``crop_scale`` of the area, aspect ratio
    3:4 to 4:3), then a horizontal flip with probability 1/2 if ``hflip``. ``train=False``:
    resize to ``size``. ``size=None`` keeps each image's own size: no crop, no resize (a
    training flip still applies). Then, for the image only: scale to [0, 1] and normalise
    by ``mean`` and ``std``.
    """
    steps: list[v2.Transform] = []
    if size is not None:
        hw = (size, size) if isinstance(size, int) else size
        if train:
            steps.append(v2.RandomResizedCrop(hw, scale=crop_scale, ratio=CROP_RATIO, antialias=True))
        else:
            steps.append(v2.Resize(hw, antialias=True))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def apply_joint(transform: Callable[..., object], image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``transform`` on an image (C, H, W, uint8) and its mask (H, W): plain (float image, int64 mask).

    The results are plain tensors again (not tv_tensors), so that batches and losses see
    ordinary tensors.
    """
    out = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"a joint transform must return (image, mask), got {type(out).__name__}")
    new_image, new_mask = out
    return new_image.as_subclass(Tensor), new_mask.as_subclass(Tensor).to(torch.int64)
