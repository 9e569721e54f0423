"""Segmentation data: fashion_mnist_seg (generation, determinism, cache), the folder format, joint augmentations.

The canvases are recomposed here, independently of gpd's loop, from the same random
draws; the folder tests write their own PNG/JPEG files with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from gpd.data import fashion_mnist_seg as fms
from gpd.data.seg_folder import build_segmentation_folder
from gpd.data.seg_transforms import apply_joint, segmentation_transform
from gpd.data.segmentation import IGNORE_INDEX, SegmentationTensorDataset
from gpd.errors import DataError
from helpers import needs_fashion_mnist

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = 96  # samples per split in the Fashion-MNIST tests: enough for all 10 garments, built in well under a second
CANVAS = 48


# --- fashion_mnist_seg ------------------------------------------------------------------------


def recompose(garments: torch.Tensor, labels: torch.Tensor, samples: int, canvas: int, seed: int):
    """The documented construction, written out with numpy: same draws, later garments on top."""
    gen = torch.Generator().manual_seed(seed)
    span = canvas - 28 + 1
    counts = torch.randint(1, 5, (samples,), generator=gen)
    picks = torch.randint(0, len(garments), (samples, 4), generator=gen)
    rows = torch.randint(0, span, (samples, 4), generator=gen)
    cols = torch.randint(0, span, (samples, 4), generator=gen)
    images = np.zeros((samples, canvas, canvas), np.uint8)
    masks = np.zeros((samples, canvas, canvas), np.uint8)
    g_np, l_np = garments.numpy(), labels.numpy()
    for i in range(samples):
        for k in range(int(counts[i])):
            g, r, c = int(picks[i, k]), int(rows[i, k]), int(cols[i, k])
            for y in range(28):
                for x in range(28):
                    if g_np[g, y, x] >= 32:
                        images[i, r + y, c + x] = g_np[g, y, x]
                        masks[i, r + y, c + x] = l_np[g] + 1
    return images, masks


def test_compose_canvases_puts_each_garment_where_drawn_later_ones_on_top():
    gen = torch.Generator().manual_seed(5)
    garments = torch.randint(0, 256, (12, 28, 28), generator=gen, dtype=torch.int64).to(torch.uint8)
    labels = torch.arange(12) % 10
    images, masks = fms.compose_canvases(garments, labels, 40, 40, torch.Generator().manual_seed(3))
    want_images, want_masks = recompose(garments, labels, 40, 40, 3)
    assert images.shape == (40, 1, 40, 40) and masks.shape == (40, 40, 40)
    assert torch.equal(images[:, 0], torch.from_numpy(want_images))
    assert torch.equal(masks, torch.from_numpy(want_masks))
    assert torch.equal(masks > 0, images[:, 0] >= fms.FOREGROUND_THRESHOLD)  # a garment exactly where the image is lit


@needs_fashion_mnist
def test_fashion_mnist_seg_is_the_documented_construction_from_each_split(tmp_path: Path):
    source = fms.FashionMNISTSource()
    for split, seed in (("train", 0), ("test", 1)):
        images, masks = fms.load_split(split, SMALL, CANVAS, seed=0, cache_folder=tmp_path, source=source)
        garments, labels = source.split(split)
        want_images, want_masks = recompose(garments, labels, SMALL, CANVAS, seed)
        assert torch.equal(images[:, 0], torch.from_numpy(want_images))
        assert torch.equal(masks, torch.from_numpy(want_masks))
        assert set(masks.unique().tolist()) == set(range(11))  # background and all 10 garments


@needs_fashion_mnist
def test_fashion_mnist_seg_is_deterministic_and_cached(tmp_path: Path, monkeypatch):
    first = fms.load_split("train", SMALL, CANVAS, seed=2, cache_folder=tmp_path / "a")
    again = fms.load_split("train", SMALL, CANVAS, seed=2, cache_folder=tmp_path / "b")  # built afresh
    files = [next((tmp_path / d).glob("*.pt")) for d in ("a", "b")]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    other = fms.load_split("train", SMALL, CANVAS, seed=3, cache_folder=tmp_path / "a")
    assert not torch.equal(first[1], other[1])
    test = fms.load_split("test", SMALL, CANVAS, seed=2, cache_folder=tmp_path / "a")
    assert not torch.equal(first[1], test[1])

    def refuse(self, split):
        raise AssertionError("Fashion-MNIST was read although the cache holds the split")

    monkeypatch.setattr(fms.FashionMNISTSource, "split", refuse)
    cached = fms.load_split("train", SMALL, CANVAS, seed=2, cache_folder=tmp_path / "a")
    assert all(torch.equal(x, y) for x, y in zip(first, cached))


@needs_fashion_mnist
@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_settings"])
def test_a_damaged_cache_is_rebuilt(tmp_path: Path, damage: str):
    images, masks = fms.load_split("test", SMALL, CANVAS, cache_folder=tmp_path)
    path = fms.cache_path(tmp_path, "test", SMALL, CANVAS, 0)
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a cache")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        torch.save({"settings": {"split": "test"}, "images": images[:1], "masks": masks[:1]}, path)
    rebuilt = fms.load_split("test", SMALL, CANVAS, cache_folder=tmp_path)
    assert torch.equal(rebuilt[0], images) and torch.equal(rebuilt[1], masks)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@needs_fashion_mnist
def test_fashion_mnist_seg_bundle_gives_float_images_and_int64_masks(tmp_path: Path):
    bundle = fms.build_fashion_mnist_seg(
        train_samples=SMALL, test_samples=32, canvas_size=CANVAS, cache_folder=tmp_path
    )
    assert (bundle.num_classes, bundle.in_chans, bundle.input_size) == (11, 1, (1, CANVAS, CANVAS))
    assert bundle.class_names[0] == "background" and len(bundle.class_names) == 11
    images, masks = next(iter(DataLoader(bundle.train, batch_size=16)))
    assert images.shape == (16, 1, CANVAS, CANVAS) and images.dtype == torch.float32
    assert masks.shape == (16, CANVAS, CANVAS) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= set(range(11))
    image, mask = bundle.test[0]  # the test split is not augmented: exactly the stored canvas
    stored = bundle.test.images[0].double() / 255
    assert torch.allclose(image.double(), (stored - bundle.mean[0]) / bundle.std[0], atol=1e-6)
    assert torch.equal(mask, bundle.test.masks[0].long())


def test_fashion_mnist_seg_refuses_bad_settings(tmp_path: Path):
    for kwargs in ({"samples": 0}, {"canvas_size": 20}, {"seed": -1}):
        args = {"samples": 4, "canvas_size": 32, "seed": 0} | kwargs
        with pytest.raises(DataError, match="fashion_mnist_seg"):
            fms.load_split("train", cache_folder=tmp_path, **args)  # type: ignore[arg-type]


# --- joint augmentations ----------------------------------------------------------------------

LEVEL = 20  # image intensity per label in the alignment tests: the image is the mask, drawn


def labelled_scene(size: int = 64) -> torch.Tensor:
    """An asymmetric mask: blocks of labels 0, 5, 10 and ignored pixels, so that a crop or flip shows."""
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[4:40, 2:20] = 5
    mask[30:60, 36:62] = 10
    mask[10:14, 44:60] = IGNORE_INDEX
    return mask


def drawn(mask: torch.Tensor) -> torch.Tensor:
    """A 3-channel image whose intensity is the label times LEVEL (ignored pixels black)."""
    levels = torch.where(mask == IGNORE_INDEX, 0, mask.int() * LEVEL).to(torch.uint8)
    return levels.expand(3, *mask.shape).clone()


def uniform_around(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2 radius + 1)^2 neighbourhood holds a single label."""
    m = mask[None, None].float()
    k = 2 * radius + 1
    high = F.max_pool2d(m, k, stride=1, padding=radius)
    low = -F.max_pool2d(-m, k, stride=1, padding=radius)
    return (high == low)[0, 0]


@pytest.mark.parametrize(("size", "train"), [(48, True), (96, True), (40, False), (100, False)])
def test_joint_transforms_keep_image_and_mask_aligned_and_labels_whole(size: int, train: bool):
    mask = labelled_scene()
    image = drawn(mask)
    transform = segmentation_transform(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=train)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = apply_joint(transform, image, mask)
        assert out_image.dtype == torch.float32 and out_image.shape == (3, size, size)
        assert type(out_mask) is torch.Tensor and out_mask.dtype == torch.int64 and out_mask.shape == (size, size)
        assert set(out_mask.unique().tolist()) <= {0, 5, 10, IGNORE_INDEX}  # nearest neighbour: no blended labels
        pixels = (out_image[0] * 0.25 + 0.5) * 255
        expected = torch.where(out_mask == IGNORE_INDEX, 0, out_mask * LEVEL).float()
        interior = uniform_around(out_mask)  # away from label edges, where the image is blended
        agree = ((pixels - expected).abs() < LEVEL / 2)[interior].float().mean()
        assert interior.float().mean() > 0.6 and agree > 0.99, f"seed {seed}: agreement {agree:.1%} inside regions"
        seen.add(out_mask.numpy().tobytes())
    assert len(seen) == (12 if train else 1)  # training draws a new crop/flip each time; test is fixed


def test_joint_flip_mirrors_both():
    mask = labelled_scene()
    image = drawn(mask)
    transform = segmentation_transform(None, (0.0,) * 3, (1.0,) * 3, train=True)
    flips = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_mask = apply_joint(transform, image, mask)
        flipped = torch.equal(out_mask, mask.flip(-1).long())
        assert flipped or torch.equal(out_mask, mask.long())
        want = image.flip(-1) if flipped else image
        assert torch.equal((out_image * 255).round().to(torch.uint8), want)
        flips += flipped
    assert 0 < flips < 8


def test_tensor_dataset_batches_through_a_dataloader():
    masks = torch.stack([labelled_scene(32)] * 6)
    images = torch.stack([drawn(m) for m in masks])
    ds = SegmentationTensorDataset(images, masks, segmentation_transform(24, (0.5,) * 3, (0.5,) * 3, train=True))
    batch_images, batch_masks = next(iter(DataLoader(ds, batch_size=6)))
    assert batch_images.shape == (6, 3, 24, 24) and batch_masks.shape == (6, 24, 24)
    assert batch_masks.dtype == torch.int64


# --- the folder format --------------------------------------------------------------------------


def write_pair(root: Path, split: str, stem: str, mask: np.ndarray, image_suffix: str = ".png", mode: str = "L"):
    """images/STEM.SUFFIX (RGB, drawn from the mask) and masks/STEM.png (mode L or P)."""
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(drawn(torch.from_numpy(mask)).permute(1, 2, 0).numpy()).save(
        root / split / "images" / f"{stem}{image_suffix}"
    )
    m = _as_palette(mask) if mode == "P" else Image.fromarray(mask)
    assert m.mode == mode
    m.save(root / split / "masks" / f"{stem}.png")


def _as_palette(mask: np.ndarray) -> Image.Image:
    """A mode-P image whose palette indices are ``mask`` (colours arbitrary, as in VOC)."""
    im = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    im.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
    return im


def small_masks() -> list[np.ndarray]:
    scene = labelled_scene(32).numpy()
    base = scene.copy()
    base[scene == 5], base[scene == 10] = 1, 2  # labels 0, 1, 2 and 255
    third = np.full((32, 32), 2, np.uint8)
    third[:8] = IGNORE_INDEX
    return [base, np.fliplr(base).copy(), third]


def write_set(root: Path) -> list[np.ndarray]:
    masks = small_masks()
    write_pair(root, "train", "a", masks[0])
    write_pair(root, "train", "b", masks[1], mode="P")
    write_pair(root, "test", "c", masks[2], image_suffix=".jpg")
    return masks


def test_folder_round_trip(tmp_path: Path):
    masks = write_set(tmp_path)
    bundle = build_segmentation_folder(tmp_path, image_size=None, augment=False)
    assert bundle.num_classes == 3 and bundle.class_names == ("0", "1", "2")  # the largest label + 1
    assert (len(bundle.train), len(bundle.test), bundle.in_chans, bundle.input_size) == (2, 1, 3, (3, 32, 32))
    for ds, want in ((bundle.train, masks[:2]), (bundle.test, masks[2:])):
        for (image, mask), expected in zip((ds[i] for i in range(len(ds))), want):
            assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(expected).long())
            assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    image, mask = bundle.train[0]  # PNG: the exact pixels, normalised with ImageNet's statistics
    mean, std = torch.tensor(bundle.mean)[:, None, None], torch.tensor(bundle.std)[:, None, None]
    assert torch.equal(((image * std + mean) * 255).round().to(torch.uint8), drawn(torch.from_numpy(masks[0])))
    (tmp_path / "classes.txt").write_text("sky\nroad\n\ncar\nperson\n")
    named = build_segmentation_folder(tmp_path, image_size=24)
    assert named.num_classes == 4 and named.class_names == ("sky", "road", "car", "person")
    assert named.train[1][1].shape == (24, 24) and named.test[0][0].shape == (3, 24, 24)


def one_line_error(root: Path) -> str:
    with pytest.raises(DataError) as info:
        build_segmentation_folder(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_folder_bad_inputs_name_the_file(tmp_path: Path):
    write_set(tmp_path)
    (tmp_path / "classes.txt").write_text("background\n")  # label 1 is now out of range
    message = one_line_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'train' / 'masks' / 'a.png'}: value 1 is neither a class (0..0, from")
    (tmp_path / "classes.txt").unlink()

    write_pair(tmp_path, "train", "lonely", small_masks()[0])
    (tmp_path / "train" / "masks" / "lonely.png").unlink()
    assert one_line_error(tmp_path).startswith(f"{tmp_path / 'train' / 'images' / 'lonely.png'}: no mask")
    (tmp_path / "train" / "images" / "lonely.png").unlink()

    write_pair(tmp_path, "test", "orphan", small_masks()[0])
    (tmp_path / "test" / "images" / "orphan.png").unlink()
    assert one_line_error(tmp_path).startswith(f"{tmp_path / 'test' / 'masks' / 'orphan.png'}: no image")
    (tmp_path / "test" / "masks" / "orphan.png").unlink()

    rgb = tmp_path / "train" / "masks" / "b.png"
    Image.new("RGB", (32, 32)).save(rgb)
    assert one_line_error(tmp_path).startswith(f"{rgb}: mask mode is RGB")
    _as_palette(small_masks()[1]).save(rgb)

    wrong_size = tmp_path / "test" / "masks" / "c.png"
    Image.new("L", (16, 32)).save(wrong_size)
    assert one_line_error(tmp_path).startswith(f"{wrong_size}: mask is 16x32 but its image c.jpg is 32x32")
    Image.fromarray(small_masks()[2]).save(wrong_size)

    jpeg_mask = tmp_path / "test" / "masks" / "d.jpg"
    write_pair(tmp_path, "test", "d", small_masks()[0])
    Image.new("L", (32, 32)).save(jpeg_mask)
    assert one_line_error(tmp_path).startswith(f"{tmp_path / 'test' / 'masks' / 'd.png'}: two files with the stem 'd'")
    (tmp_path / "test" / "masks" / "d.png").unlink()
    assert one_line_error(tmp_path).startswith(f"{jpeg_mask}: masks must be PNG")
    jpeg_mask.unlink()
    (tmp_path / "test" / "images" / "d.png").unlink()
    build_segmentation_folder(tmp_path)  # repaired: builds again

    assert "is not a folder" in one_line_error(tmp_path / "missing")
