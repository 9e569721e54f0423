"""What a data set hands to the rest of gpd: its splits and the facts models and transforms must agree on."""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any, cast

from torch.utils.data import Dataset

from gpd.data.validation import split_validation, split_validation_plain

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def num_samples(dataset: Dataset) -> int:
    """``len(dataset)``: torch's Dataset does not declare ``__len__``, every set gpd builds has one."""
    return len(cast(Sized, dataset))


@dataclass
class DataBundle:
    """A train/test pair plus what models and transforms must agree on."""

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    input_size: tuple[int, ...]  # (C, H, W) of an image; (max_length,) of a text set's token ids
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    synthetic: bool = False
    class_names: tuple[str, ...] = ()
    val: Dataset | None = None  # held out from the training set (data.val_split); None: no selection
    task: str = "image"  # what a sample is: "image" (a tensor) or "text" (a mapping of token ids)
    collate: Callable[[list[Any]], Any] | None = None  # the DataLoaders' collate_fn (text: dynamic padding)
    example: Any = None  # an input batch of real samples for the expansion (text); None: zeros of input_size
    preprocessor: str | None = None  # the directory of the tokenizer / image processor the data were prepared by
    # what a sample's target is: "label" (a class index, checked), "mask" (per-pixel classes, checked) or
    # "values" (anything else, for a task of the user's: regression values, multi-hot vectors; gpd.data.user)
    targets: str = "label"

    def hold_out_validation(self, val_split: float | None, seed: int) -> None:
        """Move ``val_split`` of the training samples (a fraction or a count, stratified by
        class, seeded; masks and other targets: a plain seeded split) into :attr:`val`, read like the test set."""
        if val_split is not None:
            split = split_validation if self.targets == "label" else split_validation_plain
            self.train, self.val = split(self.train, self.test, val_split, seed, self.mean, self.std)
