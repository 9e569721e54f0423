"""A segmentation set on disk: ``ROOT/{train,test}/images/`` and ``ROOT/{train,test}/masks/``.

An image ``images/NAME.png`` (or .jpg, .jpeg) pairs with the mask ``masks/NAME.png`` of the
same stem. A mask is a PNG of class indices, mode L (greyscale) or P (palette: the
palette indices are the classes, as in PASCAL VOC); 255 marks unlabelled pixels. The
number of classes is the number of non-empty lines of ``ROOT/classes.txt`` (the class
names, in index order) if that file exists, else the largest label of all masks of both
splits + 1. Every pair is checked once when the set is built, so that a bad file stops
the run before training with a one-line DataError naming it. Docs: docs/segmentation.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from gpd.data.bundle import IMAGENET_MEAN, IMAGENET_STD
from gpd.data.fetch import one_line
from gpd.data.seg_transforms import apply_joint, segmentation_transform
from gpd.data.segmentation import IGNORE_INDEX, SegmentationBundle
from gpd.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_MODES = ("L", "P")
CLASSES_FILE = "classes.txt"
SPLITS = ("train", "test")
DEFAULT_IMAGE_SIZE = 256  # images of any size are cropped or resized to it, so that batches stack

Pair = tuple[Path, Path]


def _files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Stem -> file for the visible files of ``folder`` with one of ``suffixes`` (any case)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(f"{path}: two files with the stem {path.stem!r} ({found[path.stem].name}, {path.name})")
        found[path.stem] = path
    return found


def pair_files(split_dir: Path) -> list[Pair]:
    """(image, mask) paths of one split, sorted by stem; unpaired files raise DataError."""
    images_dir, masks_dir = split_dir / "images", split_dir / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder; a segmentation split needs images/ and masks/")
    images = _files(images_dir, IMAGE_SUFFIXES)
    masks = _files(masks_dir, IMAGE_SUFFIXES)
    for stem, mask in masks.items():
        if mask.suffix.lower() != ".png":
            raise DataError(f"{mask}: masks must be PNG files (JPEG's lossy compression changes class indices)")
        if stem not in images:
            raise DataError(f"{mask}: no image {stem}.png/.jpg in {images_dir}")
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"{image}: no mask {stem}.png in {masks_dir}")
    if not images:
        raise DataError(f"{images_dir}: no images (.png, .jpg, .jpeg)")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def read_class_names(root: Path) -> tuple[str, ...] | None:
    """The class names of ``ROOT/classes.txt`` (one a line, blank lines skipped), or None without the file."""
    path = root / CLASSES_FILE
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise DataError(f"{path}: no class names (one a line)")
    if len(names) >= IGNORE_INDEX:
        raise DataError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX} fit beside the ignore index")
    return names


def read_mask(path: Path) -> Tensor:
    """A mask PNG as a (H, W) uint8 tensor of labels; a mode other than L or P raises DataError."""
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise DataError(
                    f"{path}: mask mode is {im.mode}; masks must be mode L or P PNGs of class indices (255 = ignore)"
                )
            return torch.from_numpy(np.array(im, dtype=np.uint8))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read the mask: {one_line(e)}") from e


def read_image(path: Path) -> Tensor:
    """An image as a (3, H, W) uint8 RGB tensor."""
    try:
        with Image.open(path) as im:
            return TF.pil_to_tensor(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image: {one_line(e)}") from e


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image: {one_line(e)}") from e


def check_pairs(pairs: Sequence[Pair], num_classes: int | None, source: str) -> int:
    """Check every mask against its image and the classes; return the largest label seen (-1: none).

    ``num_classes=None``: every value but the ignore index is a class. ``source`` says where
    the classes come from, for the error message.
    """
    largest = -1
    for image, mask_path in pairs:
        mask = read_mask(mask_path)
        width, height = _image_size(image)
        if tuple(mask.shape) != (height, width):
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image.name} is {width}x{height}"
            )
        labels = mask.unique()
        labels = labels[labels != IGNORE_INDEX]
        if labels.numel():
            top = int(labels.max())
            if num_classes is not None and top >= num_classes:
                raise DataError(
                    f"{mask_path}: value {top} is neither a class (0..{num_classes - 1}, {source}) "
                    f"nor the ignore index {IGNORE_INDEX}"
                )
            largest = max(largest, top)
    return largest


class SegmentationFolder(Dataset):
    """(image, mask) pairs read from disk per sample, through a joint transform."""

    def __init__(self, pairs: Sequence[Pair], transform: Callable[..., object], class_names: tuple[str, ...] = ()):
        self.pairs = list(pairs)
        self.transform = transform
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.pairs[index]
        return apply_joint(self.transform, read_image(image), read_mask(mask))


def build_segmentation_folder(
    root: str | Path, image_size: int | None = DEFAULT_IMAGE_SIZE, augment: bool = True
) -> SegmentationBundle:
    """The train and test splits of ``ROOT``; the training images are augmented if ``augment``.

    Training: random resized crop to ``image_size`` and a horizontal flip; test: resize to
    ``image_size``. ``image_size=None`` keeps the files' sizes (then they must agree for
    batches to stack). Images are read as RGB and normalised with ImageNet's mean and std.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; it must hold train/ and test/, each with images/ and masks/")
    pairs = {split: pair_files(root / split) for split in SPLITS}
    names = read_class_names(root)
    source = f"from {root / CLASSES_FILE}" if names is not None else "any value but the ignore index"
    num = len(names) if names is not None else None
    largest = max(check_pairs(pairs[split], num, source) for split in SPLITS)
    if names is None:
        if largest < 0:
            raise DataError(f"{root}: every mask pixel is {IGNORE_INDEX} (ignored); no class to learn")
        names = tuple(str(k) for k in range(largest + 1))
    train_tf = segmentation_transform(image_size, IMAGENET_MEAN, IMAGENET_STD, train=augment)
    test_tf = segmentation_transform(image_size, IMAGENET_MEAN, IMAGENET_STD, train=False)
    if image_size is not None:
        input_size = (3, image_size, image_size)
    else:
        width, height = _image_size(pairs["train"][0][0])
        input_size = (3, height, width)
    return SegmentationBundle(
        train=SegmentationFolder(pairs["train"], train_tf, names),
        test=SegmentationFolder(pairs["test"], test_tf, names),
        num_classes=len(names),
        in_chans=3,
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        name="segfolder",
        class_names=names,
    )
