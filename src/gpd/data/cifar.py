"""CIFAR-10/100 from torchvision's python-version pickles, as tensors (crop and flip on tensors) or
through timm's pipeline (an active augmentation recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.datasets.utils import extract_archive

from gpd.data import locate
from gpd.data.augment import AugmentRecipe, PILTransformDataset
from gpd.data.bundle import DataBundle
from gpd.data.fetch import active_recipe, download_into, load_splits, one_line, where
from gpd.data.tensor_dataset import TensorImageDataset
from gpd.errors import DataError


@dataclass(frozen=True)
class _CifarSpec:
    """A CIFAR set: the torchvision class (which also names its folder and archive) and statistics."""

    title: str
    tv_class: type[tvd.CIFAR10]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR_SETS = {
    "cifar10": _CifarSpec("CIFAR-10", tvd.CIFAR10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _CifarSpec("CIFAR-100", tvd.CIFAR100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def build_cifar(
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
    recipe = active_recipe(recipe)
    searched = roots if roots is not None else locate.default_roots()
    found = _find_cifar(spec, searched)
    if found is None and download:
        found = download_into(spec.title, lambda r: spec.tv_class(str(r), train=True, download=True), roots)
    if found is None:
        folder, archive = spec.tv_class.base_folder, spec.tv_class.filename
        raise DataError(
            f"{spec.title} not found: need {folder}/ (the python version, {archive} extracted); "
            f"looked in {where(searched, f'<dir>/{folder}/ and <dir>/{archive}')}; "
            f"to get it: extract {archive} so that <dir>/{folder}/{spec.tv_class.test_list[0][0]} exists "
            f"in one of those folders or in data.root, or pass data.download=true on a machine with internet"
        )
    train_tv, test_tv = load_splits(spec.title, found, lambda r, t: spec.tv_class(str(r), train=t))
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
                raise DataError(f"{spec.title}: could not extract {root / archive}: {one_line(e)}") from e
            return target
    return None
