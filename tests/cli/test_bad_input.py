"""Bad input, case by case: the one place these cases are tested (with test_bad_input_files.py).

The rule: bad input gets one line on stderr, ``gpd: error: <what is wrong and how to fix
it>``, exit code 2, no traceback, and nothing that exists is changed. Every test here
checks all of that, plus a word of the message proving it names the problem. No test
trains: each error comes before the first optimisation step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bad_input import fails, make_files, untouched
from gpd.io.student import student_payload
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Checkpoints of all kinds, built once (no training)."""
    return make_files(tmp_path_factory.mktemp("inputs"))


# ------------------------------------------------------------------------ 1. unknown model names


@pytest.mark.parametrize(
    "args, key, name",
    [
        (["model.student=resnet9000"], "model.student", "resnet9000"),
        (["model.student=tv:resnet9000"], "model.student", "tv:resnet9000"),
        (["model.student=timm:resnet9000"], "model.student", "timm:resnet9000"),
        (["fashion_mnist/kd", "teacher.model=resnet9000"], "teacher.model", "resnet9000"),
    ],
)
def test_unknown_model_name(args, key, name, tmp_path, capsys):
    err = fails(["train", *args, f"output_dir={tmp_path / 'run'}"], capsys)
    assert f"{key}: unknown" in err and f"'{name}'" in err and "did you mean" in err
    assert not (tmp_path / "run").exists()  # refused before a run directory is made


OWN_MODELS = """
from torch import nn


def build(num_classes, in_chans):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3), nn.Flatten(), nn.LazyLinear(num_classes))


def broken(num_classes, in_chans):
    raise ValueError("width must be even")


def no_module(num_classes, in_chans):
    return 42


NOT_A_FUNCTION = 3
"""


@pytest.mark.parametrize(
    "spec, needles",
    [
        ("no_such_pkg_for_gpd.nets:build", ["no module named 'no_such_pkg_for_gpd'", "PYTHONPATH"]),
        ("{dir}/missing.py:build", ["does not exist"]),
        ("{dir}/own_models.py:NOT_A_FUNCTION", ["not a callable factory"]),
        ("{dir}/own_models.py:absent", ["has no attribute 'absent'"]),
        ("{dir}/own_models.py:broken", ["the factory raised ValueError: width must be even"]),
        ("{dir}/own_models.py:no_module", ["returned a int, not a torch.nn.Module"]),
    ],
)
def test_a_model_of_your_own_that_cannot_be_built(spec, needles, tmp_path, capsys):
    (tmp_path / "own_models.py").write_text(OWN_MODELS)
    name = spec.format(dir=tmp_path)
    err = fails(["train", f"model.student={name}", f"output_dir={tmp_path / 'run'}"], capsys)
    assert f"model '{name}'" in err and all(needle in err for needle in needles), err
    assert not (tmp_path / "run").exists()


def test_a_student_file_whose_model_module_is_gone(tmp_path, capsys):
    (tmp_path / "own_models.py").write_text(OWN_MODELS)
    model = create_model(f"{tmp_path / 'own_models.py'}:build", 10, 1)
    model(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    torch.save(student_payload(model, data="fashion_mnist", input_size=[1, 8, 8]), tmp_path / "student.pt")
    (tmp_path / "own_models.py").unlink()
    with untouched(tmp_path):
        err = fails(["eval", str(tmp_path / "student.pt")], capsys)
    assert "own_models.py does not exist" in err


def test_a_pretrained_file_of_another_architecture(files, tmp_path, capsys):
    with untouched(files):
        err = fails(
            ["train", f"student.pretrained_file={files / 'resnet20_fm_student.pt'}", f"output_dir={tmp_path / 'run'}"],
            capsys,
        )
    assert "student.pretrained_file" in err and "does not belong to resnet8" in err and "unexpected" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["student.pretrained_file=missing.pth"], ["student.pretrained_file", "missing.pth", "does not exist"]),
        (["student.pretrained_file=missing.safetensors"], ["student.pretrained_file", "does not exist"]),
        (
            ["student.pretrained_file=a.pth", "student.checkpoint=b.pt"],
            ["student.checkpoint and student.pretrained_file", "only one"],
        ),
        (
            ["fashion_mnist/kd", "teacher.model=null", "teacher.checkpoint=null", "teacher.pretrained_file=a.pth"],
            ["teacher.pretrained_file needs teacher.model"],
        ),
    ],
)
def test_pretrained_file_errors(args, needles, tmp_path, capsys):
    err = fails(["train", *args, f"output_dir={tmp_path / 'run'}"], capsys)
    assert all(needle in err for needle in needles), err


def test_expand_of_an_unknown_model(capsys):
    err = fails(["expand", "no_such_model"], capsys)
    assert "unknown model 'no_such_model'" in err and "bundled models: " in err


# ------------------------------------------------------------------------ 2. unknown data set


def test_unknown_data_set(tmp_path, capsys):
    err = fails(["train", "data.name=svhn", f"output_dir={tmp_path / 'run'}"], capsys)
    assert "data.name: unknown data set 'svhn'" in err and "cifar100" in err  # lists the known ones
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ 3. unknown config keys, configs


@pytest.mark.parametrize(
    "args, message",
    [
        (["epochs=3"], "unknown config key 'epochs'"),
        (["train.epoch=3"], "unknown config key 'train.epoch' (Did you mean one of: 'epochs', 'ema_epochs'?)"),
        (["data.nme=svhn"], "unknown config key 'data.nme'"),
        (["fashion_mnist/scratch_gpd", "gpd.ration=3"], "unknown config key 'gpd.ration'"),
        ([".x=1"], "empty config key (override '.x=1')"),
        (["fashion_mnist/scratch_gpd", "nokey"], "override 'nokey' is not of the form key=value"),
        (["no_such_config"], "unknown config 'no_such_config': give a YAML file or one of cifar100/dkd"),
        (["{tmp}/missing.yaml"], "config file {tmp}/missing.yaml does not exist"),
    ],
)
def test_unknown_config_key_or_config(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert message.replace("{tmp}", str(tmp_path)) in fails(["train", *args], capsys)


def test_unknown_key_in_a_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("train:\n  epoch: 3\n")
    with untouched(tmp_path):
        err = fails(["train", str(config)], capsys)
    assert f"unknown config key 'train.epoch' (Did you mean one of: 'epochs', 'ema_epochs'?) in {config}" in err


def test_unknown_key_in_eval_overrides(files, capsys):
    with untouched(files):
        err = fails(["eval", str(files / "resnet8_c10.pt"), "train.epoch=1"], capsys)
    assert "unknown config key 'train.epoch'" in err


# ------------------------------------------------------------------------ 4. wrong types


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.epochs=abc", "train.epochs", "Integer"),
        ("train.epochs=1.5", "train.epochs", "Integer"),
        ("gpd.ratio=two", "gpd.ratio", "Float"),
        ("data.download=maybe", "data.download", "bool"),
        ("model.kwargs=3", "model.kwargs", "Cannot assign int to Dict"),
    ],
)
def test_value_of_the_wrong_type(override, key, expected, capsys):
    err = fails(["train", override], capsys)
    assert f"bad value for '{key}'" in err and expected in err


def test_a_value_in_place_of_a_section(capsys):
    err = fails(["train", "train=3"], capsys)
    assert "'train' is a section of the config, not a value" in err and "train.epochs=" in err


def test_wrong_type_in_a_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("train:\n  epochs: abc\n")
    err = fails(["train", str(config)], capsys)
    assert f"bad value for 'train.epochs' in {config}" in err and "Integer" in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("- data\n- train\n", "must be a mapping of sections (data:, model:, train: ...), not a list"),
        ("train: [1\n", "cannot read config"),
    ],
)
def test_config_file_that_is_not_a_mapping(text, message, tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(text)
    err = fails(["train", str(config)], capsys)
    assert message in err and str(config) in err


# ------------------------------------------------------------------------ 5. missing data files


@pytest.mark.parametrize(
    "name, needles",
    [
        ("fashion_mnist", ["Fashion-MNIST not found", "train-images-idx3-ubyte", "data.download=true", "data.root"]),
        ("mnist", ["MNIST not found", "data.download=true", "data.root"]),
        ("cifar10", ["CIFAR-10 not found", "cifar-10-batches-py", "data.download=true"]),
        ("cifar100", ["CIFAR-100 not found", "extract cifar-100-python.tar.gz", "data.download=true"]),
        ("imagefolder", ["imagefolder", "is not a folder", "train/<class>/ and val/<class>/"]),
    ],
)
def test_missing_data_files_say_how_to_get_them(name, needles, files, tmp_path, capsys):
    empty = files / "empty_dir"
    err = fails(["train", f"data.name={name}", f"data.root={empty}", f"output_dir={tmp_path / 'run'}"], capsys)
    assert str(empty) in err
    for needle in needles:
        assert needle in err
    assert list(empty.iterdir()) == []


def test_hf_disk_without_the_datasets_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    err = fails(["train", "data.name=hf_disk", f"data.root={tmp_path}", f"output_dir={tmp_path / 'run'}"], capsys)
    assert "needs the Hugging Face datasets package" in err and "pip install" in err


@pytest.mark.parametrize(
    "setup, args, needle",
    [
        ("empty", [], "is not a folder written by datasets' save_to_disk()"),
        ("saved", ["data.image_key=pixels"], "no column 'pixels' (data.image_key)"),
        ("none", [], "hf_disk needs data.root"),
    ],
)
def test_hf_disk_errors(setup, args, needle, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "set"
    root.mkdir()
    if setup == "saved":
        split = datasets.Dataset.from_dict({"image": [[[0, 1], [2, 3]]], "label": [0]})
        datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(root))
        capsys.readouterr()  # datasets' progress bars, not gpd's output
    where = [] if setup == "none" else [f"data.root={root}"]
    err = fails(["train", "data.name=hf_disk", *where, *args, f"output_dir={tmp_path / 'run'}"], capsys)
    assert needle in err, err


def test_imagefolder_without_a_root(tmp_path, capsys):
    err = fails(["train", "data.name=imagefolder", f"output_dir={tmp_path / 'run'}"], capsys)
    assert "imagefolder needs data.root" in err and "train/<class>/" in err


def test_eval_with_missing_data_files(files, capsys):
    empty = files / "empty_dir"
    with untouched(files):
        err = fails(["eval", str(files / "resnet8_c10.pt"), f"data.root={empty}"], capsys)
    assert "CIFAR-10 not found" in err and str(empty) in err and "data.download=true" in err
