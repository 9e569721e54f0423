"""A synthetic stand-in for a data set that is not on this machine (for ``--dry-run``).

Random images with the real set's channels, classes and normalisation, so that a
configuration can be checked end to end (models, losses, a few steps) before the data
is downloaded. A bundle built here is marked ``synthetic=True`` and says so in its name.
"""

from __future__ import annotations

import torch

from gpd.data.augment import AugmentRecipe, PILTransformDataset
from gpd.data.datasets import DataBundle, cifar_recipe_dataset
from gpd.data.tensor_dataset import TensorImageDataset
from gpd.errors import DataError

# channels, native size, classes of each known data set (ImageNet for imagefolder)
SHAPES = {
    "fashion_mnist": (1, 28, 10),
    "mnist": (1, 28, 10),
    "digits": (1, 8, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "imagefolder": (3, 224, 1000),
}


def synthetic_bundle(
    name: str, image_size: int | None = None, samples: int = 256, seed: int = 0, recipe: AugmentRecipe | None = None
) -> DataBundle:
    """Random uint8 images shaped like data set ``name`` (optionally resized to ``image_size``).

    An active ``recipe`` sends the training images through the timm pipeline the real
    set would use (imagefolder's or CIFAR's), so a dry run exercises it too.
    """
    key = name.lower().replace("-", "_")
    if key not in SHAPES:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(SHAPES)}")
    chans, native, classes = SHAPES[key]
    size = image_size or native
    generator = torch.Generator().manual_seed(seed)
    mean, std = (0.5,) * chans, (0.25,) * chans

    def split(n: int, train: bool = False) -> TensorImageDataset | PILTransformDataset:
        images = torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=generator)
        targets = torch.randint(0, classes, (n,), generator=generator)
        if train and recipe is not None and recipe.active and chans == 3:
            if key == "imagefolder":
                return PILTransformDataset(images, targets, recipe.train_transform(size, mean, std))
            return cifar_recipe_dataset(images, targets, recipe, size, mean, std)
        return TensorImageDataset(images, targets, mean=mean, std=std)

    return DataBundle(
        train=split(samples, train=True),
        test=split(samples // 2),
        num_classes=classes,
        in_chans=chans,
        input_size=(chans, size, size),
        mean=mean,
        std=std,
        name=f"{key} (SYNTHETIC stand-in: random images)",
        synthetic=True,
    )
