"""The segmentation sets by name, for :func:`gpd.data.build_datasets`: ``fashion_mnist_seg`` and
``segfolder`` (the folder format), as :class:`~gpd.data.bundle.DataBundle` with mask targets.

A bundle's ``targets`` is ``"mask"``: samples are ``(image, mask)``, a validation split is a plain
seeded one (:func:`gpd.data.validation.split_validation_plain`), and the masks have been checked
by the data set (generated, or read and checked file by file), so the losses need not check them.
"""

from __future__ import annotations

from pathlib import Path

from gpd.data.bundle import DataBundle
from gpd.data.segmentation import SegmentationBundle
from gpd.errors import DataError

SEGMENTATION_SETS = ("fashion_mnist_seg", "segfolder")


def build_segmentation_set(
    key: str,
    roots: list[Path] | None,
    augment: bool,
    image_size: int | None,
    train_samples: int | None = None,
    test_samples: int | None = None,
    canvas_size: int | None = None,
) -> DataBundle:
    """The segmentation set ``key``; ``train_samples`` / ``test_samples`` (data.train_subset /
    data.test_subset) are the numbers of canvases ``fashion_mnist_seg`` generates."""
    root = roots[0] if roots else None
    if key == "fashion_mnist_seg":
        from gpd.data import fashion_mnist_seg as fms

        seg = fms.build_fashion_mnist_seg(
            root,
            train_samples=train_samples or fms.DEFAULT_TRAIN_SAMPLES,
            test_samples=test_samples or fms.DEFAULT_TEST_SAMPLES,
            canvas_size=canvas_size or fms.DEFAULT_CANVAS,
            augment=augment,
            image_size=image_size,
        )
    elif key == "segfolder":
        from gpd.data.seg_folder import DEFAULT_IMAGE_SIZE, build_segmentation_folder

        if root is None:
            raise DataError("data.name=segfolder needs data.root, a folder with train/ and test/ (images/, masks/)")
        seg = build_segmentation_folder(root, image_size or DEFAULT_IMAGE_SIZE, augment)
    else:
        raise DataError(f"unknown segmentation set {key!r}; known: {', '.join(SEGMENTATION_SETS)}")
    return as_data_bundle(seg)


def as_data_bundle(seg: SegmentationBundle) -> DataBundle:
    """A :class:`SegmentationBundle` as the rest of gpd reads a data set."""
    return DataBundle(
        seg.train, seg.test, seg.num_classes, seg.in_chans, seg.input_size, seg.mean, seg.std, seg.name,
        class_names=seg.class_names, targets="mask",
    )  # fmt: skip
