"""Tests of gpd.data on small fake files in the real on-disk formats (plus the real Fashion-MNIST when installed)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from PIL import Image
from torch.utils.data import DataLoader

from gpd.data import KNOWN_DATASETS, DataBundle, TensorImageDataset, build_datasets, locate
from gpd.data import tensor_dataset as td
from gpd.errors import DataError

REPO = Path(__file__).resolve().parents[2]
IDX_NAMES = locate.IDX_FILES
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


# --- fake data writers ------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX (MNIST) file: magic 0x0000 08 <ndim> for uint8, then big-endian int32 dims, then data."""
    assert array.dtype == np.uint8
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def fake_idx_arrays(n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 images and labels 0-9 for the four IDX files."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_idx(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    """Write the four IDX files into ``folder``, gzipped (Debian/download form) or plain (torchvision form)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def write_cifar10(root: Path, n_per_batch: int = 6, seed: int = 0) -> np.ndarray:
    """cifar-10-batches-py/ as torchvision reads it (str keys, latin1 pickles); returns the test images (N,32,32,3)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    test_rows = None
    for name in names:
        rows = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": labels, "batch_label": name}, f)
        if name == "test_batch":
            test_rows = rows
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    assert test_rows is not None
    return test_rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def write_cifar100(root: Path, n: int = 8, seed: int = 0) -> None:
    """cifar-100-python/ with train, test (fine_labels) and meta (fine_label_names)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        entry = {"data": rows, "fine_labels": [i * 7 % 100 for i in range(n)], "coarse_labels": [0] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 2) -> None:
    """ROOT/{train,val}/<class>/*.png with a few small RGB images."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its cache under tmp_path, never into the real ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GPD_DATA", str(path))
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real data reachable by the default search: fresh HOME and cwd, no Debian folder."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setattr(locate, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    return work


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks CIFAR files against the real md5 sums; fake files cannot match them."""
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)


def normalized(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """What the datasets must return for uint8 ``images``, computed the plain way."""
    return (torch.from_numpy(images).float() / 255.0 - mean) / std


# --- MNIST family -------------------------------------------------------------------------------


def test_fashion_mnist_from_flat_gz_is_decompressed_into_cache(tmp_path: Path, cache: Path) -> None:
    arrays = fake_idx_arrays()
    write_idx(tmp_path / "src", arrays, gz=True)
    bundle = build_datasets("fashion_mnist", root=tmp_path / "src")

    assert isinstance(bundle, DataBundle)
    assert (len(bundle.train), len(bundle.test)) == (50, 20)
    assert (bundle.num_classes, bundle.in_chans, bundle.input_size) == (10, 1, (1, 28, 28))
    assert bundle.mean == (FASHION_MEAN,) and bundle.std == (FASHION_STD,)
    assert bundle.name == "fashion_mnist" and bundle.synthetic is False
    x, y = bundle.test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int) and y == 3
    torch.testing.assert_close(x[0], normalized(arrays["t10k-images-idx3-ubyte"][3], FASHION_MEAN, FASHION_STD))
    for name in IDX_NAMES:
        assert (cache / "FashionMNIST" / "raw" / name).read_bytes() == idx_bytes(arrays[name])
    assert not list(cache.rglob("*.tmp")), "temp files must be renamed away"


def test_decompressed_cache_is_reused_and_rebuilt_for_another_source(tmp_path: Path, cache: Path) -> None:
    write_idx(tmp_path / "a", fake_idx_arrays(seed=1), gz=True)
    build_datasets("mnist", root=tmp_path / "a")
    target = cache / "MNIST" / "raw" / "train-images-idx3-ubyte"
    first = target.stat().st_mtime_ns
    build_datasets("mnist", root=tmp_path / "a")
    assert target.stat().st_mtime_ns == first, "same source: no second decompression"

    other = fake_idx_arrays(n_train=30, seed=2)
    write_idx(tmp_path / "b", other, gz=True)
    bundle = build_datasets("mnist", root=tmp_path / "b")
    assert len(bundle.train) == 30
    assert target.read_bytes() == idx_bytes(other["train-images-idx3-ubyte"])


def test_mnist_torchvision_layout_is_used_in_place(tmp_path: Path, cache: Path) -> None:
    arrays = fake_idx_arrays()
    write_idx(tmp_path / "root" / "MNIST" / "raw", arrays, gz=False)
    bundle = build_datasets("MNIST", root=tmp_path / "root")
    assert bundle.name == "mnist" and bundle.mean == (0.1307,) and bundle.std == (0.3081,)
    x, _ = bundle.train[0]
    torch.testing.assert_close(x[0], normalized(arrays["train-images-idx3-ubyte"][0], 0.1307, 0.3081))
    assert not cache.exists(), "plain files in torchvision layout need no cache"


def test_default_search_finds_gz_in_torchvision_raw_folder_under_cwd_data(isolated: Path, cache: Path) -> None:
    write_idx(isolated / "data" / "FashionMNIST" / "raw", fake_idx_arrays(), gz=True)
    bundle = build_datasets("fashion_mnist")
    assert len(bundle.train) == 50
    assert (cache / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_default_search_uses_debian_folder_for_fashion_mnist(
    tmp_path: Path, isolated: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = tmp_path / "debian"
    write_idx(debian, fake_idx_arrays(n_train=12), gz=True)
    monkeypatch.setattr(locate, "DEBIAN_FASHION_MNIST_DIR", debian)
    assert len(build_datasets("fashion_mnist").train) == 12
    with pytest.raises(DataError):
        build_datasets("mnist")  # the Debian folder is for Fashion-MNIST only


def test_missing_fashion_mnist_error_is_one_line_with_places_and_remedy(
    tmp_path: Path, isolated: Path, cache: Path
) -> None:
    with pytest.raises(DataError) as err:
        build_datasets("fashion_mnist")
    msg = str(err.value)
    assert "\n" not in msg
    for place in (cache, isolated / "data", tmp_path / "home" / ".cache" / "gpd" / "data", tmp_path / "no-debian"):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.download=true" in msg and "data.root" in msg


def test_missing_mnist_with_explicit_root_names_that_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_datasets("mnist", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nowhere") in msg and "data.download=true" in msg


def test_corrupt_gz_is_a_data_error(tmp_path: Path) -> None:
    write_idx(tmp_path / "src", fake_idx_arrays(), gz=True)
    (tmp_path / "src" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError) as err:
        build_datasets("fashion_mnist", root=tmp_path / "src")
    assert "\n" not in str(err.value)


def test_mnist_family_has_no_augmentation_and_can_be_resized(tmp_path: Path) -> None:
    write_idx(tmp_path / "src", fake_idx_arrays(), gz=True)
    bundle = build_datasets("fashion_mnist", root=tmp_path / "src", augment=True, image_size=32)
    assert bundle.input_size == (1, 32, 32)
    a, _ = bundle.train[7]
    b, _ = bundle.train[7]
    assert a.shape == (1, 32, 32)
    assert torch.equal(a, b), "augment=True must not randomize the MNIST family"


# --- subsets and unknown names --------------------------------------------------------------------


def test_train_subset_is_seeded_and_bounded(tmp_path: Path) -> None:
    write_idx(tmp_path / "src", fake_idx_arrays(), gz=True)
    root = tmp_path / "src"

    def labels(**kw: int) -> torch.Tensor:
        ds = build_datasets("mnist", root=root, **kw).train
        assert isinstance(ds, TensorImageDataset)
        return ds.targets

    assert len(labels(train_subset=10, seed=0)) == 10
    assert torch.equal(labels(train_subset=10, seed=0), labels(train_subset=10, seed=0))
    assert len(labels(train_subset=1000)) == 50, "a subset larger than the set keeps all of it"
    full = build_datasets("mnist", root=root)
    assert len(full.test) == 20, "the test split is never subsampled"
    picks = [
        tuple(build_datasets("mnist", root=root, train_subset=10, seed=s).train.images.flatten()[:50].tolist())
        for s in range(3)
    ]
    assert len(set(picks)) > 1, "different seeds choose different samples"
    for bad in (0, -5):
        with pytest.raises(DataError):
            build_datasets("mnist", root=root, train_subset=bad)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DataError) as err:
        build_datasets("svhn")
    msg = str(err.value)
    assert "\n" not in msg and "svhn" in msg
    for name in KNOWN_DATASETS:
        assert name in msg


# --- the fast tensor dataset ------------------------------------------------------------------------


def small_tensor_dataset(n: int = 37, chans: int = 3, **kw: object) -> TensorImageDataset:
    images = torch.randint(0, 256, (n, chans, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return TensorImageDataset(images, torch.arange(n) % 5, (0.5,) * chans, (0.25,) * chans, **kw)  # type: ignore[arg-type]


def test_dataloader_batches_equal_per_item_access(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = small_tensor_dataset()
    calls: list[int] = []
    original = TensorImageDataset.__getitems__

    def spy(self: TensorImageDataset, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        calls.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(TensorImageDataset, "__getitems__", spy)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(3)).tolist()
    loader = DataLoader(ds, batch_size=8, sampler=order, num_workers=0)
    seen = 0
    for xb, yb in loader:
        assert xb.shape[1:] == (3, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
        for x, y in zip(xb, yb):
            ex, ey = ds[order[seen]]
            torch.testing.assert_close(x, ex)
            assert int(y) == ey
            seen += 1
    assert seen == len(ds)
    assert calls == [8, 8, 8, 8, 5], "DataLoader must fetch whole batches through __getitems__"
    torch.testing.assert_close(ds[0][0], (ds.images[0].float() / 255 - 0.5) / 0.25)


def test_random_crop_cuts_a_shifted_window_of_the_zero_padded_image() -> None:
    images = torch.randint(1, 256, (16, 3, 6, 5), dtype=torch.uint8)
    out = td.random_crop(images, padding=2)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for img, got in zip(padded, out):
        windows = [img[:, t : t + 6, left : left + 5] for t in range(5) for left in range(5)]
        assert any(torch.equal(got, w) for w in windows)


def test_random_hflip_keeps_or_mirrors_each_image() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    out = td.random_hflip(images)
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    assert all(k or f for k, f in zip(kept, flipped))
    assert any(kept) and any(flipped)


def test_resize_per_batch_matches_resize_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    upfront = small_tensor_dataset(image_size=12)
    monkeypatch.setattr(td, "_MAX_RESIZED_BYTES", 0)
    lazy = small_tensor_dataset(image_size=12)
    assert lazy.images.shape[-1] == 8 and upfront.images.shape[-1] == 12
    assert lazy.input_size == upfront.input_size == (3, 12, 12)
    torch.testing.assert_close(lazy.get_batch([0, 5, 9])[0], upfront.get_batch([0, 5, 9])[0])


# --- CIFAR --------------------------------------------------------------------------------------------


def test_cifar10_from_fake_pickles(tmp_path: Path, no_md5: None) -> None:
    test_images = write_cifar10(tmp_path)
    bundle = build_datasets("cifar10", root=tmp_path, augment=True)
    assert (len(bundle.train), len(bundle.test)) == (30, 6)
    assert (bundle.num_classes, bundle.in_chans, bundle.input_size) == (10, 3, (3, 32, 32))
    assert bundle.class_names[:2] == ("class0", "class1")
    x, y = bundle.test[2]
    mean = torch.tensor(bundle.mean).view(3, 1, 1)
    std = torch.tensor(bundle.std).view(3, 1, 1)
    expected = (torch.from_numpy(test_images[2]).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    assert y == 2
    train = bundle.train
    assert isinstance(train, TensorImageDataset) and train.crop_padding == 4 and train.hflip
    xb, yb = next(iter(DataLoader(train, batch_size=16, shuffle=True)))
    assert xb.shape == (16, 3, 32, 32) and yb.shape == (16,)


def test_cifar10_without_augment_and_resized(tmp_path: Path, no_md5: None) -> None:
    write_cifar10(tmp_path)
    bundle = build_datasets("cifar10", root=tmp_path, augment=False, image_size=40)
    assert bundle.input_size == (3, 40, 40)
    a, _ = bundle.train[0]
    assert a.shape == (3, 40, 40) and torch.equal(a, bundle.train[0][0])


def test_cifar100_from_fake_pickles(tmp_path: Path, no_md5: None, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar100(tmp_path / "d")
    monkeypatch.setenv("GPD_DATA", str(tmp_path / "d"))  # found by the default search
    bundle = build_datasets("cifar100")
    assert (bundle.num_classes, len(bundle.train), len(bundle.test)) == (100, 8, 8)
    assert bundle.std == (0.2673, 0.2564, 0.2762)
    assert bundle.test[1][1] == 7


def test_cifar_archive_is_extracted_into_cache(tmp_path: Path, cache: Path, no_md5: None) -> None:
    write_cifar10(tmp_path / "staging")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "staging" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    bundle = build_datasets("cifar10", root=tmp_path)
    assert len(bundle.train) == 30
    assert (cache / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar_md5_mismatch_is_a_one_line_data_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(DataError) as err:
        build_datasets("cifar10", root=tmp_path)
    assert "\n" not in str(err.value) and "corrupt" in str(err.value)


def test_missing_cifar_says_where_to_put_it(tmp_path: Path, isolated: Path, cache: Path) -> None:
    with pytest.raises(DataError) as err:
        build_datasets("cifar100")
    msg = str(err.value)
    assert "\n" not in msg
    assert "cifar-100-python" in msg and "cifar-100-python.tar.gz" in msg and "data.download=true" in msg
    assert str(cache) in msg and str(isolated / "data") in msg


# --- ImageFolder ------------------------------------------------------------------------------------


def test_imagefolder(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "imnet", classes=("a", "b", "c"))
    bundle = build_datasets("imagefolder", root=tmp_path / "imnet", image_size=32, train_subset=4)
    assert (bundle.num_classes, bundle.in_chans, bundle.input_size) == (3, 3, (3, 32, 32))
    assert bundle.mean == (0.485, 0.456, 0.406)
    assert (len(bundle.train), len(bundle.test)) == (4, 6)
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 3
    assert bundle.test[0][0].shape == (3, 32, 32)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        build_datasets("imagefolder")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        build_datasets("imagefolder", root=tmp_path / "only_train")
    assert "val" in str(err.value) and "\n" not in str(err.value)


# --- setup script and the real data ---------------------------------------------------------------


def test_setup_script_does_nothing_when_debian_files_exist(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    env = {**os.environ, "GPD_DEBIAN_FASHION_MNIST_DIR": str(tmp_path)}
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup_data.sh"), "python-not-needed"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().count("\n") == 0 and "nothing to do" in res.stdout


REAL_FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not REAL_FASHION.is_file(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # ignore any ./data of the caller
    bundle = build_datasets("fashion_mnist")
    assert (len(bundle.train), len(bundle.test)) == (60000, 10000)
    assert (bundle.num_classes, bundle.input_size) == (10, (1, 28, 28))
    assert isinstance(bundle.train, TensorImageDataset)
    xb, _ = bundle.train.get_batch(torch.arange(0, 60000, 7))
    assert abs(xb.mean().item()) < 0.02 and abs(xb.std().item() - 1.0) < 0.05
    assert sorted(bundle.train.targets.unique().tolist()) == list(range(10))
