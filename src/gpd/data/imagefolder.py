"""ImageNet-style folders (ROOT/train/<class>/, ROOT/val/<class>/), decoded per sample with PIL."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets as tvd
from torchvision import transforms as T

from gpd.data.augment import AugmentRecipe
from gpd.data.bundle import IMAGENET_MEAN, IMAGENET_STD, DataBundle
from gpd.data.fetch import active_recipe, one_line
from gpd.errors import DataError


def build_imagefolder(
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
    train_tf, test_tf = imagefolder_transforms(size, augment, recipe)
    try:
        train = tvd.ImageFolder(str(root / "train"), transform=train_tf)
        test = tvd.ImageFolder(str(root / "val"), transform=test_tf)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"imagefolder: cannot read {root}: {one_line(e)}") from e
    if train.classes != test.classes:
        raise DataError(
            f"imagefolder: {root / 'train'} has {len(train.classes)} class folders but "
            f"{root / 'val'} has {len(test.classes)} or different names; both need the same class folders"
        )
    classes = tuple(train.classes)
    return DataBundle(
        train, test, len(classes), 3, (3, size, size), IMAGENET_MEAN, IMAGENET_STD, "imagefolder", False, classes
    )


def imagefolder_transforms(
    size: int, augment: bool, recipe: AugmentRecipe | None = None
) -> tuple[T.Compose, T.Compose]:
    """Standard ImageNet recipe: random-resized crop + flip to train, resize + center crop to test.

    An active ``recipe`` trains with timm's pipeline instead, and its interpolation (if
    set) also resizes the test images.
    """
    recipe = active_recipe(recipe)
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
