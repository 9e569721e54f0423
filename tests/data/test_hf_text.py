"""data.name=hf_disk on a text column: tokenized by a tokenizer directory, padded per batch, cached.

Everything is built offline: a WordLevel tokenizer made with ``tokenizers`` and a tiny
DatasetDict written with ``save_to_disk`` (tests/hf_helpers.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from gpd.config import load_config
from gpd.data import build_datasets
from gpd.data.hf_text import TextOptions
from gpd.data.normalization import renormalized
from gpd.data.tensor_dataset import TensorImageDataset
from gpd.errors import DataError

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import hf_helpers


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_text")
    return {
        "bert": hf_helpers.save_bert(root / "bert"),
        "text": hf_helpers.save_text_dataset(root / "text"),
        "pairs": hf_helpers.save_text_dataset(root / "pairs", pairs=True),
        "vit": hf_helpers.save_vit(root / "vit"),
    }


def _text(folders: dict[str, Path], name: str = "text", **options) -> object:
    return build_datasets("hf_disk", root=folders[name], text=TextOptions(tokenizer=str(folders["bert"]), **options))


def test_a_text_set_is_tokenized_and_padded_per_batch(folders) -> None:
    bundle = _text(folders)
    assert bundle.task == "text" and bundle.num_classes == 3 and bundle.class_names == ("neg", "pos", "topic")
    features, label = bundle.train[0]
    assert set(features) == {"input_ids", "token_type_ids", "attention_mask"} and isinstance(label, int)
    assert bundle.example["input_ids"].shape[0] == 8  # several distinct texts for the expansion
    lengths = []
    for x, y in DataLoader(bundle.train, batch_size=4, collate_fn=bundle.collate):
        assert set(x) == {"input_ids", "token_type_ids", "attention_mask"} and y.dtype == torch.long
        assert x["input_ids"].shape == x["attention_mask"].shape == (len(y), x["input_ids"].shape[1])
        assert bool((x["attention_mask"].sum(1) == x["input_ids"].shape[1]).any())  # padded to its longest text
        lengths.append(x["input_ids"].shape[1])
    assert len(set(lengths)) > 1  # dynamic: each batch has its own length


def test_max_length_truncates_and_pairs_get_token_types(folders) -> None:
    short = _text(folders, max_length=4)
    assert short.input_size == (4,)
    assert max(len(short.train[i][0]["input_ids"]) for i in range(len(short.train))) == 4
    pairs = _text(folders, "pairs", text_pair_key="second")
    features, _ = pairs.train[0]
    assert 1 in features["token_type_ids"]  # the second text's tokens


def test_the_tokenized_set_is_cached_by_datasets(folders) -> None:
    _text(folders, max_length=6)
    cached = sorted(p.name for p in (folders["text"] / "train").glob("cache-*.arrow"))
    assert cached
    _text(folders, max_length=6)
    assert sorted(p.name for p in (folders["text"] / "train").glob("cache-*.arrow")) == cached


def test_text_errors_are_one_line(folders) -> None:
    with pytest.raises(DataError, match="no text column 'sentence' \\(data.text_key\\)"):
        build_datasets(
            "hf_disk", root=folders["text"], text=TextOptions("sentence", tokenizer=str(folders["bert"]), required=True)
        )
    with pytest.raises(DataError, match="needs a tokenizer"):
        build_datasets("hf_disk", root=folders["text"], text=TextOptions())
    with pytest.raises(DataError, match="no tokenizer in"):
        build_datasets("hf_disk", root=folders["text"], text=TextOptions(tokenizer=str(folders["vit"])))


def test_a_validation_split_of_text(folders) -> None:
    bundle = build_datasets(
        "hf_disk", root=folders["text"], text=TextOptions(tokenizer=str(folders["bert"])), val_split=6
    )
    assert len(bundle.val) == 6 and len(bundle.train) == 30
    x, _ = bundle.collate([bundle.val[i] for i in range(3)])
    assert x["input_ids"].shape[0] == 3


def test_an_hf_vision_student_takes_size_mean_and_std_from_its_image_processor(folders) -> None:
    from gpd.training.hf_data import prepare

    cfg = load_config(None, [f"model.student=hf:{folders['vit']}"])
    hf = prepare(cfg)
    assert (hf.image_size, hf.mean, hf.std, hf.task) == (16, (0.5,), (0.25,), "image")
    text = prepare(load_config(None, [f"model.student=hf:{folders['bert']}", "data.name=hf_disk"]))
    assert text.text.tokenizer == str(folders["bert"]) and text.text.required and text.text.model_positions == 24


def test_renormalized_changes_only_the_normalisation() -> None:
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    data = TensorImageDataset(images, torch.zeros(4), (0.3,), (0.2,))
    other = renormalized(data, (0.5,), (0.25,))
    x, _ = data.get_batch([0, 1])
    y, _ = other.get_batch([0, 1])
    torch.testing.assert_close((y * 0.25 + 0.5), (x * 0.2 + 0.3))
    assert not torch.allclose(x, y)


def test_an_image_processor_renormalises_an_hf_disk_image_set(tmp_path) -> None:
    import datasets
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    images = [Image.fromarray(p) for p in pixels]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "set"))
    bundle = build_datasets("hf_disk", root=tmp_path / "set", augment=False)
    other = renormalized(bundle.test, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, y = bundle.test[1][0], other[1][0]
    mean, std = torch.tensor(bundle.mean).view(3, 1, 1), torch.tensor(bundle.std).view(3, 1, 1)
    torch.testing.assert_close(y * 0.25 + 0.5, x * std + mean)
