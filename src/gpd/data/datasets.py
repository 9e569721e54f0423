"""Train/test data sets by name, with the facts a model needs (classes, channels, size).

The MNIST family and scikit-learn's digits live here; CIFAR in :mod:`gpd.data.cifar`, ImageNet-style
folders in :mod:`gpd.data.imagefolder`, Hugging Face sets in :mod:`gpd.data.hf_disk`.

File formats are read by torchvision.datasets; the MNIST family and CIFAR are then
wrapped in :class:`TensorImageDataset` so batches are built with tensor ops instead
of one PIL round trip per image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from gpd.data import locate
from gpd.data.augment import AugmentRecipe
from gpd.data.bundle import IMAGENET_MEAN, IMAGENET_STD, DataBundle, num_samples
from gpd.data.cifar import CIFAR_SETS, build_cifar, cifar_recipe_dataset
from gpd.data.dense import SEGMENTATION_SETS, build_segmentation_set
from gpd.data.fetch import active_recipe, download_into, load_splits, one_line, where
from gpd.data.hf_text import TextOptions
from gpd.data.imagefolder import build_imagefolder
from gpd.data.tensor_dataset import TensorImageDataset
from gpd.data.user import build_user_data
from gpd.data.validation import take
from gpd.errors import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "KNOWN_DATASETS", "DataBundle", "build_datasets", "cifar_recipe_dataset"]

MNIST_HINT = "pass data.download=true on a machine with internet, or set data.root to a folder with the four IDX files (.gz or not)"
FASHION_HINT = (
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or pass data.download=true on a machine with internet, or set data.root"
)


@dataclass(frozen=True)
class _IdxSpec:
    """An MNIST-like set: the torchvision class that reads it and its statistics."""

    title: str
    tv_class: type[tvd.MNIST]
    mean: float
    std: float
    hint: str
    extra_roots: tuple[Callable[[], Path], ...] = ()


_IDX_SETS = {
    "fashion_mnist": _IdxSpec(
        "Fashion-MNIST", tvd.FashionMNIST, 0.2860, 0.3530, FASHION_HINT, (lambda: locate.DEBIAN_FASHION_MNIST_DIR,)
    ),
    "mnist": _IdxSpec("MNIST", tvd.MNIST, 0.1307, 0.3081, MNIST_HINT),
}
DIGITS_TEST_SAMPLES = 360  # of scikit-learn's 1797 digits; the other 1437 train
DIGITS_SPLIT_SEED = 0  # the split is fixed: train.seed changes the training, not the test set
DIGITS_HINT = "pip install scikit-learn (or pip install 'gpd[bench]'): the digits ship inside it"
KNOWN_DATASETS = (*_IDX_SETS, "digits", *CIFAR_SETS, "imagefolder", "hf_disk", *SEGMENTATION_SETS)


def build_datasets(
    name: str,
    root: str | os.PathLike[str] | None = None,
    train_subset: int | None = None,
    augment: bool = True,
    image_size: int | None = None,
    download: bool = False,
    seed: int = 0,
    test_subset: int | None = None,
    recipe: AugmentRecipe | None = None,
    image_key: str = "image",
    label_key: str = "label",
    val_split: float | None = None,
    val_seed: int = 0,
    text: TextOptions | None = None,
    canvas_size: int | None = None,
) -> DataBundle:
    """Load the named data set's train and test splits.

    ``root=None`` searches $GPD_DATA, ./data and ~/.cache/gpd/data (and Debian's folder for
    Fashion-MNIST). ``train_subset=N`` keeps N training samples drawn with a permutation
    seeded by ``seed``; N above the set's size keeps all of it; ``test_subset`` likewise
    for the test split (quick runs). ``image_size`` resizes to a
    square (default: native size; 224 for imagefolder). ``recipe``: timm augmentations of
    the training images (imagefolder and CIFAR; see :mod:`gpd.data.augment`); ``None`` or an
    inactive recipe keeps the default pipelines. Raises DataError when the files are
    missing or unreadable. ``image_key`` / ``label_key``: the columns of an ``hf_disk`` set.
    ``val_split``: hold out this fraction (or count) of the (subset) training samples as
    ``bundle.val``, stratified by class and seeded by ``val_seed`` (see
    :meth:`DataBundle.hold_out_validation`). ``text``: how an ``hf_disk`` set's text column is
    tokenized (:mod:`gpd.data.hf_text`); a set with such a column and no image column is text.
    Segmentation sets (:mod:`gpd.data.dense`) give ``(image, mask)`` samples; ``fashion_mnist_seg``
    generates ``train_subset`` / ``test_subset`` canvases of ``canvas_size`` pixels.
    """
    key = name.lower().replace("-", "_")
    if train_subset is not None and train_subset <= 0:
        raise DataError(f"data.train_subset must be a positive number of samples, got {train_subset}")
    if image_size is not None and image_size <= 0:
        raise DataError(f"data.image_size must be positive, got {image_size}")
    roots = None if root is None else [Path(root).expanduser()]
    recipe = active_recipe(recipe)
    if recipe is not None and (key in _IDX_SETS or key == "digits"):
        raise DataError(f"the timm augmentations (data.randaugment ...) need colour images; {name} is greyscale")
    if key in _IDX_SETS:
        bundle = _build_idx(key, _IDX_SETS[key], roots, image_size, download)
    elif key == "digits":
        bundle = _build_digits(image_size)
    elif key in CIFAR_SETS:
        bundle = build_cifar(key, CIFAR_SETS[key], roots, augment, image_size, download, recipe)
    elif key == "imagefolder":
        bundle = build_imagefolder(roots, augment, image_size, recipe)
    elif key == "hf_disk":
        if recipe is not None:
            raise DataError("the timm augmentations (data.randaugment ...) are not available for hf_disk yet")
        from gpd.data.hf_disk import build_hf_disk_bundle  # datasets is optional: imported only here

        bundle = build_hf_disk_bundle(roots[0] if roots else None, image_key, label_key, augment, image_size, text)
    elif key in SEGMENTATION_SETS:
        if recipe is not None:
            raise DataError("the timm augmentations (data.randaugment ...) are for classification images, not masks")
        generated = key == "fashion_mnist_seg"  # the subsets are the numbers of canvases it generates
        bundle = build_segmentation_set(
            key, roots, augment, image_size, train_subset if generated else None,
            test_subset if generated else None, canvas_size,
        )  # fmt: skip
        if generated:
            train_subset = test_subset = None
    elif _is_import_path(name):  # a builder of the user's own (gpd.data.user)
        bundle, taken = build_user_data(name, root=root, train_subset=train_subset, test_subset=test_subset,
                                        seed=seed, image_size=image_size, augment=augment)  # fmt: skip
        train_subset = None if "train_subset" in taken else train_subset
        test_subset = None if "test_subset" in taken else test_subset
    else:
        raise DataError(
            f"unknown data set {name!r}; known data sets: {', '.join(KNOWN_DATASETS)}, or a builder of your own as "
            "path/to/file.py:FUNCTION or MODULE:FUNCTION"
        )
    if train_subset is not None:
        bundle.train = _subset(bundle.train, train_subset, seed)
    if test_subset is not None:
        bundle.test = _subset(bundle.test, test_subset, seed)
    bundle.hold_out_validation(val_split, val_seed)
    return bundle


def _is_import_path(name: str) -> bool:
    from gpd.models.import_path import is_import_path  # the model zoo is imported for import paths only

    return is_import_path(name)


def _subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """The first ``n`` of a seeded permutation (sorted, for memory locality); all if n >= len."""
    total = num_samples(ds)
    if n >= total:
        return ds
    gen = torch.Generator().manual_seed(seed)
    return take(ds, torch.randperm(total, generator=gen)[:n].sort().values)


# --- MNIST family -------------------------------------------------------------------------


def _build_idx(
    key: str, spec: _IdxSpec, roots: list[Path] | None, image_size: int | None, download: bool
) -> DataBundle:
    """MNIST/Fashion-MNIST; augmentation stays off since crops and flips do not help there."""
    searched = roots if roots is not None else locate.default_roots() + [f() for f in spec.extra_roots]
    class_name = spec.tv_class.__name__
    try:
        found = locate.find_idx_root(class_name, searched)
    except OSError as e:
        raise DataError(f"{spec.title}: could not prepare the IDX files in {locate.cache_dir()}: {one_line(e)}") from e
    if found is None and download:
        found = download_into(spec.title, lambda r: spec.tv_class(str(r), train=True, download=True), roots)
    if found is None:
        raise DataError(
            f"{spec.title} not found: need {', '.join(locate.IDX_FILES)} (each plain or .gz); "
            f"looked in {where(searched, f'<dir>/{class_name}/raw/, <dir>/raw/ and <dir>/')}; "
            f"to get it: {spec.hint}"
        )
    train_tv, test_tv = load_splits(spec.title, found, lambda r, t: spec.tv_class(str(r), train=t))
    classes = tuple(str(c) for c in train_tv.classes)

    def wrap(tv: tvd.MNIST) -> TensorImageDataset:
        return TensorImageDataset(tv.data.unsqueeze(1), tv.targets, (spec.mean,), (spec.std,), classes, image_size)

    train, test = wrap(train_tv), wrap(test_tv)
    return DataBundle(train, test, len(classes), 1, train.input_size, (spec.mean,), (spec.std,), key, False, classes)


# --- scikit-learn's digits -------------------------------------------------------------------


def _build_digits(image_size: int | None) -> DataBundle:
    """The 1797 8x8 greyscale digits bundled with scikit-learn (UCI optdigits test set; no download).

    A fixed stratified split (seed DIGITS_SPLIT_SEED): 1437 training and 360 test images.
    Pixels are counts 0-16, stored as uint8 scaled to 0-255; mean and std are those of the
    training split. Native size 8x8: the bundled CIFAR-style ResNets (3x3 stride-1 stem,
    two stride-2 stages, global pooling) run on it; ``image_size`` resizes if wanted.
    No augmentation, as for the MNIST family.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError(f"digits needs scikit-learn, which is not installed: {DIGITS_HINT}") from None
    digits = load_digits()
    images = torch.from_numpy((digits.images * (255.0 / 16.0)).round()).to(torch.uint8).unsqueeze(1)
    targets = torch.as_tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        list(range(len(targets))), test_size=DIGITS_TEST_SAMPLES, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    train_idx, test_idx = torch.tensor(sorted(train_idx)), torch.tensor(sorted(test_idx))
    pixels = images[train_idx].float() / 255.0
    mean, std = (round(float(pixels.mean()), 4),), (round(float(pixels.std()), 4),)
    classes = tuple(str(c) for c in digits.target_names)

    def wrap(idx: torch.Tensor) -> TensorImageDataset:
        return TensorImageDataset(images[idx], targets[idx], mean, std, classes, image_size)

    train, test = wrap(train_idx), wrap(test_idx)
    return DataBundle(train, test, len(classes), 1, train.input_size, mean, std, "digits", False, classes)
