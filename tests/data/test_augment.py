"""The DeiT recipe's augmentations: timm pipelines, Mixup/CutMix, soft targets in the losses.

Unset keys must leave the default pipelines exactly as they were; each key must change
the pipeline as intended; soft targets must reach the losses without a second label
smoothing, and DKD must read them as their argmax.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_data import no_md5, write_cifar10, write_imagefolder  # noqa: F401  (no_md5 is a fixture)
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from gpd.config import load_config
from gpd.data import TensorImageDataset, build_datasets, synthetic_bundle
from gpd.data.augment import AugmentRecipe, PILTransformDataset
from gpd.data.bundle import IMAGENET_MEAN, IMAGENET_STD
from gpd.data.imagefolder import imagefolder_transforms
from gpd.data.mixing import build_mixup, mix_batch
from gpd.distill import Distiller
from gpd.errors import ConfigError
from gpd.losses import dkd
from gpd.models import create_model
from gpd.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DEIT = AugmentRecipe(randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25, interpolation="bicubic")


def seeded(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def steps(transform: T.Compose) -> list[object]:
    return list(transform.transforms)


def pil_image(seed: int = 0, size: tuple[int, int] = (50, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ------------------------------------------------------------------ default pipelines unchanged


@pytest.mark.parametrize("recipe", [None, AugmentRecipe()], ids=["none", "inactive"])
def test_default_imagefolder_pipeline_is_unchanged(recipe):
    train, test = imagefolder_transforms(32, True, recipe)
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    expected_train = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), *norm])
    expected_test = T.Compose([T.Resize(int(32 * 256 / 224)), T.CenterCrop(32), *norm])
    assert repr(train) == repr(expected_train) and repr(test) == repr(expected_test)
    image = pil_image()
    for ours, theirs in ((train, expected_train), (test, expected_test)):
        seeded(3)
        a = ours(image)
        seeded(3)
        assert torch.equal(a, theirs(image))


def test_default_imagefolder_data_set_is_unchanged(tmp_path):
    write_imagefolder(tmp_path / "imnet")
    plain = build_datasets("imagefolder", root=tmp_path / "imnet", image_size=32)
    inactive = build_datasets("imagefolder", root=tmp_path / "imnet", image_size=32, recipe=AugmentRecipe())
    for i in range(len(plain.train)):
        seeded(i)
        a = plain.train[i][0]
        seeded(i)
        assert torch.equal(a, inactive.train[i][0])


def test_default_cifar_pipeline_is_unchanged(tmp_path, no_md5):  # noqa: F811
    write_cifar10(tmp_path)
    plain = build_datasets("cifar10", root=tmp_path)
    inactive = build_datasets("cifar10", root=tmp_path, recipe=AugmentRecipe())
    for bundle in (plain, inactive):
        assert isinstance(bundle.train, TensorImageDataset)  # the fast batched path
        assert bundle.train.crop_padding == 4 and bundle.train.hflip
    seeded(1)
    a = plain.train.get_batch(torch.arange(10))[0]
    seeded(1)
    assert torch.equal(a, inactive.train.get_batch(torch.arange(10))[0])


def test_synthetic_stand_in_is_unchanged_without_a_recipe():
    a = synthetic_bundle("imagefolder", image_size=32, samples=8)
    b = synthetic_bundle("imagefolder", image_size=32, samples=8, recipe=AugmentRecipe())
    assert isinstance(b.train, TensorImageDataset)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)


# ------------------------------------------------------------------ each key changes the pipeline


def test_deit_recipe_on_imagefolder_uses_timm_randaugment_erasing_and_bicubic(tmp_path):
    train, test = imagefolder_transforms(32, True, DEIT)
    kinds = [type(t).__name__ for t in steps(train)]
    assert kinds[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    ra = next(t for t in steps(train) if isinstance(t, RandAugment))
    assert {op.magnitude for op in ra.ops} == {9} and ra.num_layers == 2
    erasing = next(t for t in steps(train) if isinstance(t, RandomErasing))
    assert erasing.probability == 0.25 and erasing.mode == "pixel"
    assert "bicubic" in repr(steps(train)[0]) and "ColorJitter" not in kinds
    assert steps(test)[0].interpolation == T.InterpolationMode.BICUBIC  # DeiT resizes test images bicubic too
    write_imagefolder(tmp_path / "imnet")
    bundle = build_datasets("imagefolder", root=tmp_path / "imnet", image_size=32, recipe=DEIT)
    x, _y = bundle.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_each_image_key_alone():
    def kinds(recipe: AugmentRecipe) -> list[str]:
        return [type(t).__name__ for t in steps(recipe.train_transform(32, IMAGENET_MEAN, IMAGENET_STD))]

    assert "RandAugment" in kinds(AugmentRecipe(randaugment="rand-m9-mstd0.5-inc1"))
    assert "RandomErasing" in kinds(AugmentRecipe(random_erasing=0.5))
    jitter = AugmentRecipe(color_jitter=0.4).train_transform(32, IMAGENET_MEAN, IMAGENET_STD)
    cj = next(t for t in steps(jitter) if isinstance(t, T.ColorJitter))
    assert cj.brightness == (0.6, 1.4) and "RandomErasing" not in kinds(AugmentRecipe(color_jitter=0.4))
    assert "ColorJitter" not in kinds(AugmentRecipe(randaugment="rand-m9", color_jitter=0.4))  # timm: not both
    nearest = AugmentRecipe(interpolation="nearest").train_transform(32, IMAGENET_MEAN, IMAGENET_STD)
    assert "nearest" in repr(steps(nearest)[0])
    assert not AugmentRecipe().active and all(
        r.active for r in (AugmentRecipe("rand-m9"), AugmentRecipe(random_erasing=0.1), AugmentRecipe(color_jitter=0.0),
                           AugmentRecipe(interpolation="bilinear"))
    )  # fmt: skip


def test_random_erasing_changes_pixels():
    image = pil_image(size=(32, 32))
    plain = AugmentRecipe(interpolation="bilinear").train_transform(32, IMAGENET_MEAN, IMAGENET_STD)
    erased = AugmentRecipe(interpolation="bilinear", random_erasing=1.0).train_transform(
        32, IMAGENET_MEAN, IMAGENET_STD
    )
    seeded(5)
    a = plain(image)
    seeded(5)
    b = erased(image)
    differ = (a != b).any(dim=0)
    assert 0 < differ.float().mean() < 1  # one rectangle is replaced, the rest is the same image


def test_cifar_recipe_keeps_cifars_crop_and_goes_through_pil(tmp_path, no_md5):  # noqa: F811
    write_cifar10(tmp_path)
    bundle = build_datasets("cifar10", root=tmp_path, recipe=DEIT)
    assert isinstance(bundle.train, PILTransformDataset) and isinstance(bundle.test, TensorImageDataset)
    first = steps(bundle.train.transform)
    assert isinstance(first[0], T.RandomCrop) and first[0].padding == 4 and isinstance(first[1], T.RandomHorizontalFlip)
    assert any(isinstance(t, RandAugment) for t in first) and any(isinstance(t, RandomErasing) for t in first)
    x, y = bundle.train[3]
    assert x.shape == (3, 32, 32) and y == 3
    resized = build_datasets("cifar10", root=tmp_path, recipe=DEIT, image_size=64)
    assert isinstance(steps(resized.train.transform)[0], T.Resize) and resized.train[0][0].shape == (3, 64, 64)
    assert resized.input_size == (3, 64, 64)


def test_recipe_without_augment_keeps_the_plain_training_images(tmp_path, no_md5):  # noqa: F811
    write_cifar10(tmp_path)
    bundle = build_datasets("cifar10", root=tmp_path, augment=False, recipe=DEIT)
    assert isinstance(bundle.train, TensorImageDataset) and bundle.train.crop_padding == 0


def test_synthetic_stand_in_runs_the_recipe():
    bundle = synthetic_bundle("imagefolder", image_size=32, samples=8, recipe=DEIT)
    assert isinstance(bundle.train, PILTransformDataset) and bundle.train[0][0].shape == (3, 32, 32)
    assert any(isinstance(t, RandAugment) for t in steps(bundle.train.transform))


# ------------------------------------------------------------------ Mixup / CutMix


def mixup_config(**overrides: object):
    args = [f"data.{k}={v}" for k, v in overrides.items()]
    return load_config(None, args).data


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one():
    mixup = build_mixup(mixup_config(mixup=0.8, cutmix=1.0), num_classes=10, label_smoothing=0.1, batch_size=8)
    assert mixup is not None and (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing) == (0.8, 1.0, 0.1)
    seeded(0)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    original = x.clone()
    for _ in range(4):  # both Mixup and CutMix get drawn
        mixed, soft = mix_batch(mixup, x.clone(), y)
        assert soft.shape == (8, 10) and soft.dtype.is_floating_point
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
        assert soft.min() >= 0.1 / 10 - 1e-7  # smoothed by Mixup
        assert not torch.equal(mixed, original)


def test_mixup_off_leaves_the_batch_alone():
    assert build_mixup(mixup_config(), num_classes=10) is None
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    mixed, targets = mix_batch(None, x, y)
    assert mixed is x and targets is y


def test_mixup_needs_an_even_batch_per_process():
    with pytest.raises(ConfigError, match="even batch on each process"):
        build_mixup(mixup_config(cutmix=1.0), num_classes=10, batch_size=7)


# ------------------------------------------------------------------ soft targets in the losses


def soft_targets(n: int = 6, k: int = 10, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, k, generator=gen), dim=1)


@pytest.fixture(scope="module")
def kd_distiller():
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    teacher = create_model("resnet8", 10, 1)
    options = {"alpha": 1.0, "beta": 2.0, "temperature": 1.0, "warmup_epochs": 0.0}
    return Distiller(student, teacher, "dkd", kd_options=options, label_smoothing=0.3, input_size=(1, 28, 28)).eval()


def test_cross_entropy_of_soft_targets_is_the_plain_soft_cross_entropy_without_smoothing(kd_distiller):
    x, y = torch.randn(6, 1, 28, 28), soft_targets()
    with torch.no_grad():
        losses = kd_distiller(x, y).losses
        student, dynamic = kd_distiller.student_logits(x), kd_distiller.dynamic_logits(x)
    for name, logits in (("ce_student", student), ("ce_dynamic", dynamic)):
        manual = -(y * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()  # no second smoothing
        torch.testing.assert_close(losses[name], manual)
    hard = y.argmax(dim=1)
    with torch.no_grad():
        smoothed = kd_distiller(x, hard).losses["ce_student"]
    torch.testing.assert_close(smoothed, F.cross_entropy(student, hard, label_smoothing=0.3))  # hard labels: smoothed


def test_dkd_reads_soft_targets_as_their_argmax(kd_distiller):
    x, y = torch.randn(6, 1, 28, 28), soft_targets(seed=1)
    with torch.no_grad():
        soft = kd_distiller(x, y).losses
        hard = kd_distiller(x, y.argmax(dim=1)).losses
        student, static = kd_distiller.student_logits(x), kd_distiller.static_teacher(x)
    for role in ("student", "dynamic"):
        torch.testing.assert_close(soft[f"kd_{role}"], hard[f"kd_{role}"])
    torch.testing.assert_close(soft["kd_student"], dkd(student, static, y.argmax(dim=1), 1.0, 2.0, 1.0))
    torch.testing.assert_close(soft["sce"], hard["sce"])


def test_reviewkd_accepts_soft_targets():
    torch.manual_seed(0)
    distiller = Distiller(
        create_model("resnet8", 10, 1), create_model("resnet14", 10, 1), "reviewkd", input_size=(1, 28, 28)
    )
    losses = distiller(torch.randn(4, 1, 28, 28), soft_targets(4)).losses
    assert {"reviewkd_student", "reviewkd_dynamic", "ce_student"} <= set(losses)
    sum(losses.values()).backward()


def test_trainer_feeds_mixed_soft_targets_to_the_distiller(tmp_path, monkeypatch):
    """With Mixup on, the loss sees soft targets (smoothed once, by Mixup) and the metrics count images."""
    cfg = load_config(None, ["data.mixup=0.8", "data.cutmix=1.0", "train.label_smoothing=0.1", "train.batch_size=8",
                             "kd.method=dkd", "teacher.model=resnet8", "model.student=resnet8"])  # fmt: skip
    monkeypatch.setenv("GPD_DATA", str(tmp_path / "nothing"))
    trainer = Trainer(cfg, tmp_path / "run", dry_run=True)
    assert trainer.loop.mixup is not None and trainer.loop.mixup.label_smoothing == 0.1
    seen: list[torch.Tensor] = []
    original = Distiller.forward

    def spy(self, x, y, **kwargs):
        seen.append(y.detach().clone())
        return original(self, x, y, **kwargs)

    monkeypatch.setattr(Distiller, "forward", spy)
    result = trainer.loop.train_one_epoch(1)
    assert seen and all(y.shape == (8, 10) and y.is_floating_point() for y in seen)
    for y in seen:
        torch.testing.assert_close(y.sum(dim=1), torch.ones(8))
        assert y.min() >= 0.01 - 1e-7
    assert result["img_per_s"] > 0 and np.isfinite(result["loss"])
