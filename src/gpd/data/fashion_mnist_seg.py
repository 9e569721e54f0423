"""``fashion_mnist_seg``: an offline segmentation set made of real Fashion-MNIST garments.

Each sample is a black square canvas (64 x 64 by default) with 1 to 4 garments of the
matching Fashion-MNIST split pasted at random positions, in order: where a later garment
overlaps an earlier one, it covers it. A garment pixel is foreground when its intensity is
at least :data:`FOREGROUND_THRESHOLD`; only foreground pixels are pasted, into the image
(their intensity) and into the mask (the garment's class + 1). All other pixels are
background: 0 in the image and in the mask. So there are 11 classes: background and the
10 garments, and a pixel is labelled a garment exactly where the image is non-zero.

Everything random comes from a torch.Generator seeded by ``seed`` and the split, so the
same settings give the same bytes on every machine. A split is generated once and cached
(:func:`cache_path`); a later build with the same settings reads the cache, and a cache
that is unreadable, partial or made with other settings is generated again. Docs:
docs/segmentation.md ("Data").
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import Tensor

from gpd.data import locate
from gpd.data.fetch import one_line
from gpd.data.seg_transforms import segmentation_transform
from gpd.data.segmentation import SegmentationBundle, SegmentationTensorDataset
from gpd.errors import DataError
from gpd.io.atomic import atomic_write_bytes

NAME = "fashion_mnist_seg"
GARMENT_SIZE = 28  # Fashion-MNIST images are 28 x 28
# Intensity (0-255) from which a garment pixel counts as foreground: 1/8 of full scale.
# It drops the faint anti-aliased rim: about 10% of the non-zero pixels lie below it.
FOREGROUND_THRESHOLD = 32
MAX_GARMENTS = 4
GARMENT_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CLASS_NAMES = ("background", *GARMENT_CLASSES)
NUM_CLASSES = len(CLASS_NAMES)  # 11
DEFAULT_TRAIN_SAMPLES = 10_000
DEFAULT_TEST_SAMPLES = 2_000
DEFAULT_CANVAS = 64
SPLITS = ("train", "test")
# Bumped whenever the generation changes, so that old caches are rebuilt rather than reused.
FORMAT_VERSION = 1


def compose_canvases(
    garments: Tensor, labels: Tensor, samples: int, canvas_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``samples`` canvases from ``garments`` (N, 28, 28 uint8) and their ``labels`` (N,).

    Returns images (samples, 1, S, S, uint8) and masks (samples, S, S, uint8). The random
    draws are made up front, in a fixed order (garment counts, garment indices, rows,
    columns), so the result depends only on the generator's seed and the arguments.
    """
    span = canvas_size - GARMENT_SIZE + 1
    counts = torch.randint(1, MAX_GARMENTS + 1, (samples,), generator=generator)
    picks = torch.randint(0, garments.shape[0], (samples, MAX_GARMENTS), generator=generator)
    rows = torch.randint(0, span, (samples, MAX_GARMENTS), generator=generator)
    cols = torch.randint(0, span, (samples, MAX_GARMENTS), generator=generator)
    images = torch.zeros(samples, 1, canvas_size, canvas_size, dtype=torch.uint8)
    masks = torch.zeros(samples, canvas_size, canvas_size, dtype=torch.uint8)
    foreground = garments >= FOREGROUND_THRESHOLD
    classes = (labels + 1).to(torch.uint8)
    for i, count in enumerate(counts.tolist()):
        for k in range(count):
            g = int(picks[i, k])
            r, c = int(rows[i, k]), int(cols[i, k])
            window = (slice(r, r + GARMENT_SIZE), slice(c, c + GARMENT_SIZE))
            fg = foreground[g]
            images[i, 0][window][fg] = garments[g][fg]
            masks[i][window][fg] = classes[g]
    return images, masks


def cache_path(folder: Path, split: str, samples: int, canvas_size: int, seed: int) -> Path:
    """The cache file of one split: its name holds every setting the bytes depend on."""
    return folder / (f"{split}-n{samples}-canvas{canvas_size}-seed{seed}-fg{FOREGROUND_THRESHOLD}-v{FORMAT_VERSION}.pt")


def default_cache_folder(root: Path | None) -> Path:
    """``ROOT/fashion_mnist_seg`` when a data root is given, else gpd's cache folder's (see locate.cache_dir)."""
    return (root if root is not None else locate.cache_dir()) / NAME


def _settings(split: str, samples: int, canvas_size: int, seed: int) -> dict[str, int | str]:
    return {
        "split": split,
        "samples": samples,
        "canvas_size": canvas_size,
        "seed": seed,
        "threshold": FOREGROUND_THRESHOLD,
        "version": FORMAT_VERSION,
    }


def _read_cache(path: Path, settings: dict[str, int | str]) -> tuple[Tensor, Tensor] | None:
    """The cached (images, masks), or None if the file is missing, unreadable or not what ``settings`` make."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any damage (truncation, garbage, a foreign pickle) means: build again
        return None
    if not isinstance(entry, dict) or entry.get("settings") != settings:
        return None
    images, masks = entry.get("images"), entry.get("masks")
    n, size = settings["samples"], settings["canvas_size"]
    if not (isinstance(images, Tensor) and isinstance(masks, Tensor)):
        return None
    if images.shape != (n, 1, size, size) or masks.shape != (n, size, size):
        return None
    if images.dtype != torch.uint8 or masks.dtype != torch.uint8 or int(masks.max()) >= NUM_CLASSES:
        return None
    return images, masks


def _split_seed(seed: int, split: str) -> int:
    """Distinct generator seeds for every (seed, split): train 2*seed, test 2*seed + 1."""
    return 2 * seed + SPLITS.index(split)


class FashionMNISTSource:
    """Fashion-MNIST's splits as (N, 28, 28 uint8 images, labels), read once on first use, as gpd reads Fashion-MNIST.

    ``root``: where Fashion-MNIST is looked for (None: gpd's usual places, Debian's folder
    included). Nothing is read while every split comes from the cache.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        if not self._splits:
            from gpd.data.datasets import build_datasets  # here: datasets.py may list this set one day

            bundle = build_datasets("fashion_mnist", root=self.root)
            for name, source in zip(SPLITS, (bundle.train, bundle.test)):
                images, labels = getattr(source, "images", None), getattr(source, "targets", None)
                if not (isinstance(images, Tensor) and isinstance(labels, Tensor)):
                    raise DataError(f"{NAME}: Fashion-MNIST's {name} split did not load as images and labels")
                self._splits[name] = (images[:, 0], labels)
        return self._splits[split]


def load_split(
    split: str,
    samples: int,
    canvas_size: int = DEFAULT_CANVAS,
    seed: int = 0,
    root: Path | None = None,
    cache_folder: Path | None = None,
    source: FashionMNISTSource | None = None,
) -> tuple[Tensor, Tensor]:
    """One split's images (N, 1, S, S) and masks (N, S, S), both uint8: from the cache, or generated and cached.

    ``root``: where Fashion-MNIST is looked for (None: gpd's usual places, Debian's folder
    included). ``cache_folder``: where the cache lives (default: :func:`default_cache_folder`).
    ``source``: the garments, shared between splits so that Fashion-MNIST is read once.
    A cache that cannot be written is skipped with a warning: the set is still returned.
    """
    if split not in SPLITS:
        raise DataError(f"{NAME}: unknown split {split!r}; splits: {', '.join(SPLITS)}")
    _check_settings(samples, canvas_size, seed, f"{split}_samples")
    folder = cache_folder if cache_folder is not None else default_cache_folder(root)
    path = cache_path(folder, split, samples, canvas_size, seed)
    settings = _settings(split, samples, canvas_size, seed)
    cached = _read_cache(path, settings)
    if cached is not None:
        return cached
    garments, labels = (source or FashionMNISTSource(root)).split(split)
    generator = torch.Generator().manual_seed(_split_seed(seed, split))
    images, masks = compose_canvases(garments, labels, samples, canvas_size, generator)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Through a buffer: torch.save names its archive after the file, here a random temporary
        # name, and the cache should be the same bytes for the same settings.
        buffer = io.BytesIO()
        torch.save({"settings": settings, "images": images, "masks": masks}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        warnings.warn(
            f"{NAME}: could not cache the {split} split in {folder} ({one_line(e)}); it is rebuilt next time",
            stacklevel=2,
        )
    return images, masks


def _check_settings(samples: int, canvas_size: int, seed: int, samples_key: str) -> None:
    if samples <= 0:
        raise DataError(f"{NAME}: {samples_key} must be a positive number of samples, got {samples}")
    if canvas_size < GARMENT_SIZE:
        raise DataError(f"{NAME}: the canvas must hold a 28 x 28 garment; canvas_size={canvas_size} is below 28")
    if seed < 0:
        raise DataError(f"{NAME}: the seed must be 0 or more, got {seed}")


def build_fashion_mnist_seg(
    root: Path | None = None,
    train_samples: int = DEFAULT_TRAIN_SAMPLES,
    test_samples: int = DEFAULT_TEST_SAMPLES,
    canvas_size: int = DEFAULT_CANVAS,
    seed: int = 0,
    augment: bool = True,
    image_size: int | None = None,
    cache_folder: Path | None = None,
) -> SegmentationBundle:
    """Train and test splits of ``fashion_mnist_seg``, read through joint transforms.

    The training split is augmented (``augment``) with a random resized crop back to the
    canvas size (or ``image_size``) and a horizontal flip; the test split is only resized
    to ``image_size`` if given. Images are normalised by the training canvases' mean and std.
    """
    _check_settings(test_samples, canvas_size, seed, "test_samples")
    source = FashionMNISTSource(root)
    train_images, train_masks = load_split("train", train_samples, canvas_size, seed, root, cache_folder, source)
    test_images, test_masks = load_split("test", test_samples, canvas_size, seed, root, cache_folder, source)
    pixels = train_images.double() / 255.0
    mean, std = (round(float(pixels.mean()), 4),), (round(float(pixels.std()), 4),)
    size = image_size or canvas_size
    train_tf = segmentation_transform(size, mean, std, train=augment)
    test_tf = segmentation_transform(image_size, mean, std, train=False)
    return SegmentationBundle(
        train=SegmentationTensorDataset(train_images, train_masks, train_tf, CLASS_NAMES),
        test=SegmentationTensorDataset(test_images, test_masks, test_tf, CLASS_NAMES),
        num_classes=NUM_CLASSES,
        in_chans=1,
        input_size=(1, size, size),
        mean=mean,
        std=std,
        name=NAME,
        class_names=CLASS_NAMES,
    )
