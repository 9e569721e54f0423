"""Train/test data sets by name, with the facts a model needs (classes, channels, size).

File formats are read by torchvision.datasets; the MNIST family and CIFAR are then
wrapped in :class:`TensorImageDataset` so batches are built with tensor ops instead
of one PIL round trip per image.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.utils import extract_archive

from gpd.data import locate
from gpd.data.augment import AugmentRecipe, PILTransformDataset
from gpd.data.tensor_dataset import TensorImageDataset
from gpd.data.validation import split_validation, take
from gpd.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MNIST_HINT = "pass data.download=true on a machine with internet, or set data.root to a folder with the four IDX files (.gz or not)"
FASHION_HINT = (
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or pass data.download=true on a machine with internet, or set data.root"
)


@dataclass
class DataBundle:
    """A train/test pair plus what models and transforms must agree on."""

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    synthetic: bool = False
    class_names: tuple[str, ...] = ()
    val: Dataset | None = None  # held out from the training set (data.val_split); None: no selection

    def hold_out_validation(self, val_split: float | None, seed: int) -> None:
        """Move ``val_split`` of the training samples (a fraction or a count, stratified by
        class, seeded) into :attr:`val`, read like the test set."""
        if val_split is not None:
            self.train, self.val = split_validation(self.train, self.test, val_split, seed, self.mean, self.std)


@dataclass(frozen=True)
class _IdxSpec:
    """An MNIST-like set: the torchvision class that reads it and its statistics."""

    title: str
    tv_class: type[tvd.MNIST]
    mean: float
    std: float
    hint: str
    extra_roots: tuple[Callable[[], Path], ...] = ()


@dataclass(frozen=True)
class _CifarSpec:
    """A CIFAR set: the torchvision class (which also names its folder and archive) and statistics."""

    title: str
    tv_class: type[tvd.CIFAR10]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_IDX_SETS = {
    "fashion_mnist": _IdxSpec(
        "Fashion-MNIST", tvd.FashionMNIST, 0.2860, 0.3530, FASHION_HINT, (lambda: locate.DEBIAN_FASHION_MNIST_DIR,)
    ),
    "mnist": _IdxSpec("MNIST", tvd.MNIST, 0.1307, 0.3081, MNIST_HINT),
}
_CIFAR_SETS = {
    "cifar10": _CifarSpec("CIFAR-10", tvd.CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _CifarSpec("CIFAR-100", tvd.CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DIGITS_TEST_SAMPLES = 360  # of scikit-learn's 1797 digits; the other 1437 train
DIGITS_SPLIT_SEED = 0  # the split is fixed: train.seed changes the training, not the test set
DIGITS_HINT = "pip install scikit-learn (or pip install 'gpd[bench]'): the digits ship inside it"
KNOWN_DATASETS = (*_IDX_SETS, "digits", *_CIFAR_SETS, "imagefolder", "hf_disk")


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
    :meth:`DataBundle.hold_out_validation`).
    """
    key = name.lower().replace("-", "_")
    if train_subset is not None and train_subset <= 0:
        raise DataError(f"data.train_subset must be a positive number of samples, got {train_subset}")
    if image_size is not None and image_size <= 0:
        raise DataError(f"data.image_size must be positive, got {image_size}")
    roots = None if root is None else [Path(root).expanduser()]
    recipe = _active(recipe)
    if recipe is not None and (key in _IDX_SETS or key == "digits"):
        raise DataError(f"the timm augmentations (data.randaugment ...) need colour images; {name} is greyscale")
    if key in _IDX_SETS:
        bundle = _build_idx(key, _IDX_SETS[key], roots, image_size, download)
    elif key == "digits":
        bundle = _build_digits(image_size)
    elif key in _CIFAR_SETS:
        bundle = _build_cifar(key, _CIFAR_SETS[key], roots, augment, image_size, download, recipe)
    elif key == "imagefolder":
        bundle = _build_imagefolder(roots, augment, image_size, recipe)
    elif key == "hf_disk":
        if recipe is not None:
            raise DataError("the timm augmentations (data.randaugment ...) are not available for hf_disk yet")
        from gpd.data.hf_disk import build_hf_disk  # datasets is optional: imported only here

        train, test, classes, chans, size, mean, std, names = build_hf_disk(
            roots[0] if roots else None, image_key, label_key, augment, image_size
        )
        bundle = DataBundle(train, test, classes, chans, size, mean, std, "hf_disk", False, names)
    else:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(KNOWN_DATASETS)}")
    if train_subset is not None:
        bundle.train = _subset(bundle.train, train_subset, seed)
    if test_subset is not None:
        bundle.test = _subset(bundle.test, test_subset, seed)
    bundle.hold_out_validation(val_split, val_seed)
    return bundle


def _subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """The first ``n`` of a seeded permutation (sorted, for memory locality); all if n >= len."""
    total = len(ds)  # type: ignore[arg-type]
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
        raise DataError(f"{spec.title}: could not prepare the IDX files in {locate.cache_dir()}: {_one_line(e)}") from e
    if found is None and download:
        found = _download(spec.title, lambda r: spec.tv_class(str(r), train=True, download=True), roots)
    if found is None:
        raise DataError(
            f"{spec.title} not found: need {', '.join(locate.IDX_FILES)} (each plain or .gz); "
            f"looked in {_where(searched, f'<dir>/{class_name}/raw/, <dir>/raw/ and <dir>/')}; "
            f"to get it: {spec.hint}"
        )
    train_tv, test_tv = _load(spec.title, found, lambda r, t: spec.tv_class(str(r), train=t))
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


# --- CIFAR ----------------------------------------------------------------------------------


def _build_cifar(
    key: str,
    spec: _CifarSpec,
    roots: list[Path] | None,
    augment: bool,
    image_size: int | None,
    download: bool,
    recipe: AugmentRecipe | None = None,
) -> DataBundle:
    """CIFAR-10/100 from the python-version pickles; crop + flip augmentation on tensors
    (with an active ``recipe``: the training images go through timm's pipeline instead)."""
    recipe = _active(recipe)
    searched = roots if roots is not None else locate.default_roots()
    found = _find_cifar(spec, searched)
    if found is None and download:
        found = _download(spec.title, lambda r: spec.tv_class(str(r), train=True, download=True), roots)
    if found is None:
        folder, archive = spec.tv_class.base_folder, spec.tv_class.filename
        raise DataError(
            f"{spec.title} not found: need {folder}/ (the python version, {archive} extracted); "
            f"looked in {_where(searched, f'<dir>/{folder}/ and <dir>/{archive}')}; "
            f"to get it: extract {archive} so that <dir>/{folder}/{spec.tv_class.test_list[0][0]} exists "
            f"in one of those folders or in data.root, or pass data.download=true on a machine with internet"
        )
    train_tv, test_tv = _load(spec.title, found, lambda r, t: spec.tv_class(str(r), train=t))
    classes = tuple(str(c) for c in train_tv.classes)
    size = image_size or 32
    padding = round(4 * size / 32) if augment else 0

    def wrap(tv: tvd.CIFAR10, train: bool) -> TensorImageDataset:
        images = torch.from_numpy(tv.data).permute(0, 3, 1, 2).contiguous()
        targets = torch.as_tensor(tv.targets, dtype=torch.long)
        pad, flip = (padding, augment) if train else (0, False)
        return TensorImageDataset(images, targets, spec.mean, spec.std, classes, image_size, pad, flip)

    if recipe is not None and augment:
        images = torch.from_numpy(train_tv.data).permute(0, 3, 1, 2)
        targets = torch.as_tensor(train_tv.targets, dtype=torch.long)
        train: Dataset = cifar_recipe_dataset(images, targets, recipe, size, spec.mean, spec.std, classes)
    else:
        train = wrap(train_tv, True)
    test = wrap(test_tv, False)
    return DataBundle(train, test, len(classes), 3, test.input_size, spec.mean, spec.std, key, False, classes)


def cifar_recipe_dataset(
    images: torch.Tensor,
    targets: torch.Tensor,
    recipe: AugmentRecipe,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str] = (),
) -> PILTransformDataset:
    """CIFAR-like (N, 3, H, W) uint8 training images through timm's pipeline with CIFAR's crop."""
    crop = recipe.cifar_crop(size, images.shape[-1], round(4 * size / 32), flip=True)
    return PILTransformDataset(images, targets, recipe.train_transform(size, mean, std, crop=crop), classes)


def _find_cifar(spec: _CifarSpec, roots: Sequence[Path]) -> Path | None:
    """A root holding the extracted CIFAR folder; a found archive is extracted into the cache first."""
    folder, archive = spec.tv_class.base_folder, spec.tv_class.filename
    for root in roots:
        if (root / folder).is_dir():
            return root
        if root.name == folder and root.is_dir():
            return root.parent
        if (root / archive).is_file():
            target = locate.cache_dir()
            try:
                extract_archive(str(root / archive), str(target))
            except Exception as e:  # tarfile/OSError: a broken archive is the user's to fix
                raise DataError(f"{spec.title}: could not extract {root / archive}: {_one_line(e)}") from e
            return target
    return None


# --- ImageFolder ----------------------------------------------------------------------------


def _build_imagefolder(
    roots: list[Path] | None, augment: bool, image_size: int | None, recipe: AugmentRecipe | None = None
) -> DataBundle:
    """ImageNet-style ROOT/train/<class>/ and ROOT/val/<class>/, decoded per sample with PIL."""
    if roots is None:
        raise DataError(
            "imagefolder needs data.root: a folder with train/<class>/*.jpg and val/<class>/*.jpg (ImageNet layout)"
        )
    root = roots[0]
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(
                f"imagefolder: {root / split} is not a folder; data.root must hold train/<class>/ and val/<class>/"
            )
    size = image_size or 224
    train_tf, test_tf = _imagefolder_transforms(size, augment, recipe)
    try:
        train = tvd.ImageFolder(str(root / "train"), transform=train_tf)
        test = tvd.ImageFolder(str(root / "val"), transform=test_tf)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"imagefolder: cannot read {root}: {_one_line(e)}") from e
    if train.classes != test.classes:
        raise DataError(
            f"imagefolder: {root / 'train'} has {len(train.classes)} class folders but "
            f"{root / 'val'} has {len(test.classes)} or different names; both need the same class folders"
        )
    classes = tuple(train.classes)
    return DataBundle(
        train, test, len(classes), 3, (3, size, size), IMAGENET_MEAN, IMAGENET_STD, "imagefolder", False, classes
    )


def _imagefolder_transforms(
    size: int, augment: bool, recipe: AugmentRecipe | None = None
) -> tuple[T.Compose, T.Compose]:
    """Standard ImageNet recipe: random-resized crop + flip to train, resize + center crop to test.

    An active ``recipe`` trains with timm's pipeline instead, and its interpolation (if
    set) also resizes the test images.
    """
    recipe = _active(recipe)
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if recipe is not None and recipe.interpolation is not None:
        resize = T.Resize(int(size * 256 / 224), interpolation=recipe.pil_interpolation)
    else:
        resize = T.Resize(int(size * 256 / 224))
    test = T.Compose([resize, T.CenterCrop(size), *norm])
    if not augment:
        return test, test
    if recipe is not None:
        return recipe.train_transform(size, IMAGENET_MEAN, IMAGENET_STD), test
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
    return train, test


# --- shared helpers -------------------------------------------------------------------------


def _active(recipe: AugmentRecipe | None) -> AugmentRecipe | None:
    """``recipe`` if it changes anything, else None (the default pipelines)."""
    return recipe if recipe is not None and recipe.active else None


def _download(title: str, fetch: Callable[[Path], object], roots: list[Path] | None) -> Path:
    """Let torchvision download into data.root, or into the cache folder when no root was given."""
    target = roots[0] if roots else locate.cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        fetch(target)
    except (RuntimeError, URLError, OSError) as e:
        raise DataError(f"{title}: download into {target} failed ({_one_line(e)}); is there internet access?") from e
    return target


def _load(title: str, root: Path, make: Callable[[Path, bool], object]) -> tuple:
    """Build torchvision's train and test datasets, turning its errors into one-line DataErrors."""
    try:
        return make(root, True), make(root, False)
    except (RuntimeError, OSError, ValueError, TypeError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise DataError(f"{title}: files in {root} are corrupt or incomplete: {_one_line(e)}") from e


def _where(roots: Sequence[Path], layouts: str) -> str:
    """'A, B, C (as LAYOUTS)' for error messages."""
    return f"{', '.join(str(r) for r in roots)} (as {layouts})"


def _one_line(e: BaseException) -> str:
    """An exception's message without newlines, fit for a one-line DataError."""
    text = " ".join(str(e).split())
    return text or type(e).__name__
