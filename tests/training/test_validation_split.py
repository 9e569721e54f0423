"""data.val_split: a stratified, seeded hold-out read like the test set, and weights selected on
it alone (the test set never decides what student.pt holds)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from gpd.config import load_config
from gpd.data import build_datasets
from gpd.data.augment import PILTransformDataset
from gpd.data.labels import check_labels, dataset_targets
from gpd.data.tensor_dataset import TensorImageDataset
from gpd.data.validation import evaluation_view, split_validation, stratified_split, val_count
from gpd.errors import DataError
from gpd.training import Trainer, prepare_run_dir
from helpers import needs_fashion_mnist

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = [
    "data.train_subset=640", "data.test_subset=256", "train.batch_size=64", "train.eval_batch_size=256",
    "train.device=cpu", "train.deterministic=true", "train.grad_probe_every=0",
]  # fmt: skip


# ------------------------------------------------------------------------ the split


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[
        torch.randperm(100, generator=torch.Generator().manual_seed(3))
    ]
    train, val = stratified_split(targets, 10, seed=7)
    assert len(val) == 10 and len(train) == 90
    assert set(train.tolist()).isdisjoint(val.tolist()) and sorted(train.tolist() + val.tolist()) == list(range(100))
    assert torch.bincount(targets[val], minlength=3).tolist() == [5, 3, 2]
    again, other = stratified_split(targets, 10, seed=7)[1], stratified_split(targets, 10, seed=8)[1]
    assert torch.equal(val, again) and not torch.equal(val, other)


def test_stratified_split_distributes_remainders_to_hit_the_count():
    targets = torch.tensor([0] * 7 + [1] * 7 + [2] * 7)
    _, val = stratified_split(targets, 4, seed=0)  # quotas 4/3 each: 2 + 1 + 1
    assert len(val) == 4 and sorted(torch.bincount(targets[val]).tolist()) == [1, 1, 2]


@pytest.mark.parametrize(
    "value, total, expected", [(0.1, 1000, 100), (0.25, 10, 2), (200, 1000, 200), (200.0, 1000, 200)]
)
def test_val_count_takes_a_fraction_or_a_count(value, total, expected):
    assert val_count(value, total) == expected


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, 1000, 0.0001])
def test_val_count_refuses_what_leaves_nothing(value):
    with pytest.raises(DataError, match="data.val_split"):
        val_count(value, 1000)


def test_validation_images_are_read_without_augmentation():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    targets = torch.arange(40) % 4
    train = TensorImageDataset(images, targets, (0.5,) * 3, (0.2,) * 3, ("a", "b", "c", "d"), None, 2, True)
    test = TensorImageDataset(images, targets, (0.5,) * 3, (0.2,) * 3, ("a", "b", "c", "d"))
    rest, val = split_validation(train, test, 0.25, seed=0, mean=(0.5,) * 3, std=(0.2,) * 3)
    assert len(rest) == 30 and len(val) == 10
    assert rest.crop_padding == 2 and rest.hflip  # training keeps its augmentation
    assert val.crop_padding == 0 and not val.hflip
    x1, y1 = val.get_batch(list(range(10)))
    x2, _ = val.get_batch(list(range(10)))
    assert torch.equal(x1, x2)
    expected, labels = test.get_batch(stratified_split(targets, 10, seed=0)[1])
    assert torch.equal(x1, expected) and torch.equal(y1, labels)  # as the test pipeline reads them
    assert torch.bincount(y1, minlength=4).tolist() == [3, 3, 2, 2]  # quotas of 2.5: ties to the smaller class


def test_timm_pipeline_training_set_gets_a_tensor_view_like_the_test_set():
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    targets = torch.arange(12) % 3
    train = PILTransformDataset(images, targets, lambda img: torch.zeros(1), ("a", "b", "c"))
    test = TensorImageDataset(images, targets, (0.5,) * 3, (0.2,) * 3, ("a", "b", "c"))
    view = evaluation_view(train, test, (0.5,) * 3, (0.2,) * 3)
    assert isinstance(view, TensorImageDataset)
    assert torch.equal(view.get_batch([0, 5])[0], test.get_batch([0, 5])[0])


def test_image_folder_view_uses_the_test_transform(tmp_path: Path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (40, 40), (i * 40, 20, 90)).save(tmp_path / split / cls / f"{i}.png")
    bundle = build_datasets("imagefolder", root=tmp_path, image_size=32, val_split=0.4, val_seed=1)
    assert len(bundle.train) == 6 and len(bundle.val) == 4  # type: ignore[arg-type]
    assert sorted(dataset_targets(bundle.val).tolist()) == [0, 0, 1, 1]  # type: ignore[arg-type]
    x, _ = bundle.val[0]  # type: ignore[index]
    y, _ = bundle.val[0]  # type: ignore[index]
    assert x.shape == (3, 32, 32) and torch.equal(x, y)  # center crop, no random crop or flip


def test_labels_are_checked_once_against_the_classes():
    good = TensorDataset(torch.zeros(4, 1), torch.tensor([0, 1, 2, 1]))
    check_labels(good, 3, "training")
    with pytest.raises(DataError, match=r"training labels range over \[0, 3\] but the data set has 3 classes"):
        check_labels(TensorDataset(torch.zeros(2, 1), torch.tensor([0, 3])), 3, "training")


# ------------------------------------------------------------------------ selection


def _scrambled_test_loader(trainer: Trainer) -> DataLoader:
    """The same test images with random labels: any selection on the test set would change."""
    gen = torch.Generator().manual_seed(123)
    xs, ys = zip(*[(x, torch.randint(0, 10, (len(y),), generator=gen)) for x, y in trainer.loop.loaders.test])
    return DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=256)


def _train(tmp_path: Path, name: str, options: list[str], scramble: bool) -> tuple[dict, list[dict[str, str]], dict]:
    run = tmp_path / name
    cfg = load_config(None, [*SMALL, *options, f"output_dir={run}"])
    trainer = Trainer(cfg, prepare_run_dir(cfg))
    if scramble:
        trainer.loop.loaders = trainer.loop.loaders._replace(test=_scrambled_test_loader(trainer))
    trainer.fit()
    payload = torch.load(run / "student.pt", weights_only=True)
    return payload["state_dict"], list(csv.DictReader(open(run / "metrics.csv"))), payload["metadata"]


@needs_fashion_mnist
def test_weights_are_selected_on_validation_and_test_accuracy_never_influences_them(tmp_path: Path):
    options = ["data.val_split=0.1", "train.epochs=3", "train.ema=true", "train.ema_epochs=0.5"]
    a, rows_a, meta_a = _train(tmp_path, "a", options, scramble=False)
    b, rows_b, meta_b = _train(tmp_path, "b", options, scramble=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["student_acc"] for r in rows_a] != [r["student_acc"] for r in rows_b]  # the test sets differ
    assert [r["val_student_acc"] for r in rows_a] == [r["val_student_acc"] for r in rows_b]
    assert meta_a["selected_on"] == "validation" and (meta_a["epoch"], meta_a["weights"]) == (
        meta_b["epoch"],
        meta_b["weights"],
    )
    # the choice is the best validation accuracy over epochs and over final/EMA weights
    candidates = [
        (float(r[f"val_{w}_acc"]), -int(r["epoch"]), w == "student") for r in rows_a for w in ("student", "ema_student")
    ]
    best_val, neg_epoch, final = max(candidates)
    assert meta_a["val_acc"] == pytest.approx(best_val, abs=1e-3)
    assert (meta_a["epoch"], meta_a["weights"]) == (-neg_epoch, "final" if final else "ema")
    assert {"val_student_acc", "val_dynamic_acc", "val_ema_student_acc", "val_ema_dynamic_acc"} <= set(rows_a[0])


@needs_fashion_mnist
def test_without_a_validation_split_the_last_weights_are_exported_whatever_the_test_says(tmp_path: Path):
    a, rows_a, meta_a = _train(tmp_path, "a", ["train.epochs=2"], scramble=False)
    b, _, meta_b = _train(tmp_path, "b", ["train.epochs=2"], scramble=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert meta_a["epoch"] == meta_b["epoch"] == 2 and meta_a["weights"] == "final"
    assert "val_student_acc" not in rows_a[0]
