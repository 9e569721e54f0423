"""The digits data set: scikit-learn's 8x8 digits, a fixed stratified split, offline."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from gpd.cli.main import main
from gpd.data import KNOWN_DATASETS, build_datasets, synthetic_bundle
from gpd.errors import DataError
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")
sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (make test installs it)")


def test_split_sizes_classes_and_shape() -> None:
    bundle = build_datasets("digits")
    assert "digits" in KNOWN_DATASETS
    assert (len(bundle.train), len(bundle.test)) == (1437, 360)
    assert bundle.input_size == (1, 8, 8) and bundle.in_chans == 1 and bundle.num_classes == 10
    assert bundle.class_names == tuple(str(i) for i in range(10))
    x, y = bundle.train.get_batch(range(16))  # type: ignore[attr-defined]
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_split_is_stratified_disjoint_and_fixed() -> None:
    first, second = build_datasets("digits", seed=0), build_datasets("digits", seed=7)
    assert torch.equal(first.test.images, second.test.images)  # the seed does not move the test set
    counts = torch.bincount(first.test.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 10% of each class of ~180
    train_rows = {tuple(r) for r in first.train.images.flatten(1).tolist()}
    test_rows = [tuple(r) for r in first.test.images.flatten(1).tolist()]
    overlap = sum(r in train_rows for r in test_rows)
    assert overlap <= 2  # the raw set has a handful of duplicate images, no shared indices beyond that


def test_pixels_and_normalisation_come_from_the_training_split() -> None:
    bundle = build_datasets("digits")
    images = bundle.train.images
    assert images.dtype == torch.uint8 and int(images.max()) == 255 and int(images.min()) == 0
    x, _ = bundle.train.get_batch(range(len(bundle.train)))  # type: ignore[attr-defined]
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1.0) < 1e-3
    assert bundle.mean[0] == pytest.approx(float(images.float().mean() / 255), abs=1e-4)


def test_subsets_and_resizing() -> None:
    bundle = build_datasets("digits", train_subset=100, test_subset=50, image_size=16)
    assert (len(bundle.train), len(bundle.test)) == (100, 50)
    assert bundle.input_size == (1, 16, 16)
    assert bundle.train.get_batch([0, 1])[0].shape == (2, 1, 16, 16)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
def test_bundled_cifar_resnets_run_on_8x8(name: str) -> None:
    model = create_model(name, 10, 1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_missing_scikit_learn_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(DataError) as err:
        build_datasets("digits")
    message = str(err.value)
    assert "\n" not in message and "pip install scikit-learn" in message


def test_greyscale_refuses_the_colour_recipe_and_has_a_synthetic_stand_in() -> None:
    from gpd.data.augment import AugmentRecipe

    with pytest.raises(DataError, match="greyscale"):
        build_datasets("digits", recipe=AugmentRecipe(randaugment="rand-m9-mstd0.5"))
    assert synthetic_bundle("digits", samples=8).input_size == (1, 8, 8)


def test_cli_trains_on_digits(tmp_path: Path) -> None:
    run_dir = tmp_path / "digits"
    args = ["data.name=digits", "train.epochs=2", "train.batch_size=64", f"output_dir={run_dir}"]
    assert main(["train", *args]) == 0
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 2
    assert float(rows[-1]["student_acc"]) > 80.0  # D and the student learn the digits within 2 short epochs
    assert float(rows[-1]["dynamic_acc"]) > 80.0
