"""An in-memory image dataset that works on whole batches of uint8 tensors.

torchvision's MNIST/CIFAR classes turn every sample into a PIL image and back, which
costs more than a small network's forward pass on a 2-core CPU. Here the images stay as
one uint8 tensor and a batch is gathered, augmented and normalized with a handful of
tensor ops. ``__getitems__`` is the hook DataLoader's default fetcher calls with all
indices of a batch at once, so a plain ``DataLoader(ds, batch_size=...)`` benefits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

# Above this many bytes a resized copy of the whole set is not kept; batches are resized
# as they are drawn instead (slower per epoch, but e.g. CIFAR at 224 px would need 7.5 GB).
_MAX_RESIZED_BYTES = 2 * 1024**3

Indices = Tensor | Sequence[int]


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize a (N, C, H, W) uint8 batch to size x size (bilinear, antialiased, like PIL)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_crop(images: Tensor, padding: int) -> Tensor:
    """Zero-pad each image by ``padding`` and cut a random window of the original size, per image."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1))
    left = torch.randint(0, 2 * padding + 1, (n, 1))
    rows = (top + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (left + torch.arange(w))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: (N, H, W, C).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def random_hflip(images: Tensor) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0]) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """Images as one (N, C, H, W) uint8 tensor; items are normalized float (C, H, W) tensors.

    Augmentation draws from torch's global RNG so that ``torch.manual_seed`` (and the
    per-worker seeding of DataLoader) govern it.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] = (),
        image_size: int | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        chans = images.shape[1]
        if len(mean) != chans or len(std) != chans:
            raise ValueError(f"mean/std need {chans} values, got {len(mean)}/{len(std)}")
        self.size = image_size or images.shape[-1]
        self._resize_per_batch = False
        if image_size is not None and images.shape[-2:] != (image_size, image_size):
            resized_bytes = len(images) * chans * image_size * image_size
            self._resize_per_batch = resized_bytes > _MAX_RESIZED_BYTES
            if not self._resize_per_batch:
                images = _resize_in_chunks(images, image_size)
        self.images = images
        self.targets = targets.long()
        self.classes = list(classes)
        self.crop_padding = crop_padding
        self.hflip = hflip
        # x_norm = (x / 255 - mean) / std, folded into one multiply-add.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensors this dataset returns."""
        return (self.images.shape[1], self.size, self.size)

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: Indices) -> tuple[Tensor, Tensor]:
        """A (B, C, H, W) float batch and its (B,) int64 labels, built with tensor ops only."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        if self._resize_per_batch:
            x = resize_uint8(x, self.size)
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding)
        if self.hflip:
            x = random_hflip(x)
        x = (x.float() * self._scale + self._shift).contiguous()
        return x, self.targets[idx]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self.get_batch([index])
        return x[0], int(y[0])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """DataLoader's batched fetch: one gather for the batch, then per-sample views for collate."""
        x, y = self.get_batch(indices)
        return list(zip(x.unbind(0), y.tolist()))

    def subset(self, indices: Indices) -> TensorImageDataset:
        """A new dataset holding only ``indices`` (copies them, so the rest can be freed)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = object.__new__(TensorImageDataset)
        out.__dict__.update(self.__dict__)
        out.images = self.images[idx]
        out.targets = self.targets[idx]
        return out


def _resize_in_chunks(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Resize the whole set once, in chunks so the float copy stays small."""
    return torch.cat([resize_uint8(images[i : i + chunk], size) for i in range(0, len(images), chunk)])
