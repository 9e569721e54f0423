"""data.name=hf_disk: a Hugging Face data set saved to disk, written here, trained on by gpd train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpd.cli.main import main
from gpd.data import build_datasets

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def write_tiny_set(root: Path, mode: str = "L", n_train: int = 96, n_test: int = 48, size: int = 16) -> Path:
    """Three classes told apart by where a bright square sits; PIL images with a ClassLabel."""
    rng = np.random.default_rng(0)

    def split(n: int) -> dict:
        images, labels = [], []
        for i in range(n):
            label = i % 3
            pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
            pixels[2 + 4 * label : 6 + 4 * label, 4:10] = 250
            from PIL import Image

            picture = Image.fromarray(pixels, mode="L")
            images.append(picture.convert(mode))
            labels.append(label)
        return {"img": images, "y": labels}

    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["top", "middle", "bottom"])})
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(split(n_train), features=features),
        "test": datasets.Dataset.from_dict(split(n_test), features=features),
    })  # fmt: skip
    data.save_to_disk(str(root))
    return root


@pytest.mark.parametrize("mode, chans", [("L", 1), ("RGB", 3)])
def test_a_saved_set_loads_with_its_classes_channels_and_statistics(mode: str, chans: int, tmp_path: Path) -> None:
    root = write_tiny_set(tmp_path / "tiny", mode=mode)
    bundle = build_datasets("hf_disk", root=root, image_key="img", label_key="y", augment=False)
    assert bundle.class_names == ("top", "middle", "bottom") and bundle.num_classes == 3
    assert bundle.input_size == (chans, 16, 16) and bundle.in_chans == chans
    assert len(bundle.train) == 96 and len(bundle.test) == 48
    x, y = bundle.train[4]
    assert x.shape == (chans, 16, 16) and y == 1
    pixels = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    assert torch.allclose(pixels.mean(dim=(0, 2, 3)), torch.zeros(chans), atol=1e-3)  # normalised by its own statistics


def test_gpd_trains_on_a_saved_set(tmp_path: Path) -> None:
    root = write_tiny_set(tmp_path / "tiny")
    run = tmp_path / "run"
    args = ["train", "data.name=hf_disk", f"data.root={root}", "data.image_key=img", "data.label_key=y",
            "train.batch_size=32", "train.epochs=2", f"output_dir={run}"]  # fmt: skip
    assert main(args) == 0
    assert (run / "student.pt").is_file()
    payload = torch.load(run / "student.pt", weights_only=True)
    assert payload["metadata"]["class_names"] == ["top", "middle", "bottom"]
