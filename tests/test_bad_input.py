"""Bad input, case by case: the one place these cases are tested.

The rule: bad input gets one line on stderr, ``gpd: error: <what is wrong and how to fix
it>``, exit code 2, no traceback, and nothing that exists is changed. Every test here
checks all of that, plus a word of the message proving it names the problem. No test
trains: each error comes before the first optimisation step.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gpd.cli.main import main
from gpd.config import load_config
from gpd.data import locate
from gpd.io.student import student_payload
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FASHION_MNIST_PRESENT = (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_PRESENT, reason="Fashion-MNIST is not installed (make test installs it)"
)


# ------------------------------------------------------------------------ helpers


def fails(argv: Sequence[str], capsys) -> str:
    """Run ``gpd ARGV`` in-process; assert exit code 2 and one clean error line, and return it."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert err.startswith("gpd: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert "Traceback" not in err + captured.out, err
    return err.strip()


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """mtime and content hash of every file under ``roots`` (files or folders)."""
    files: dict[str, tuple[int, str]] = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            files[str(path)] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


@contextmanager
def untouched(*roots: Path) -> Iterator[None]:
    """Assert that no file under ``roots`` is created, changed or removed inside the block."""
    before = snapshot(*roots)
    yield
    assert snapshot(*roots) == before


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Checkpoints of all kinds, built once (no training)."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    # gpd student files
    torch.save(
        student_payload(create_model("resnet8", 10, 3), data="cifar10", input_size=[3, 32, 32]), root / "resnet8_c10.pt"
    )
    torch.save(student_payload(create_model("resnet8", 100, 1)), root / "resnet8_fm100.pt")
    torch.save(student_payload(create_model("resnet20", 10, 1)), root / "resnet20_fm_student.pt")
    # plain state_dict files
    torch.save(create_model("resnet20", 10, 1).state_dict(), root / "resnet20_fm.pth")
    torch.save(create_model("resnet8", 10, 3).state_dict(), root / "resnet8_c10.pth")
    # unreadable files
    (root / "garbage.pt").write_bytes(random.Random(0).randbytes(4096))
    (root / "empty.pt").write_bytes(b"")
    (root / "truncated.pt").write_bytes((root / "resnet8_c10.pt").read_bytes()[:5000])
    torch.save(create_model("resnet8", 10, 1), root / "pickled_module.pt")  # a whole module: code, not weights
    (root / "empty_dir").mkdir()
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A tiny ImageNet-style folder: 3 classes, 2 images each in train/ and val/."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for split in ("train", "val"):
        for label in ("cat", "dog", "fox"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(folder / f"{i}.png")
    return root


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


# ------------------------------------------------------------------------ 6. class count of teacher and student


def test_teacher_of_10_classes_for_a_cifar100_student(files, tmp_path, capsys):
    # a dry run without the data set uses a synthetic CIFAR-100 stand-in; the teacher is still checked
    args = [
        "cifar100/kd",
        "teacher.model=null",
        f"teacher.checkpoint={files / 'resnet8_c10.pt'}",
        f"data.root={files / 'empty_dir'}",
    ]
    with untouched(files):
        err = fails(["train", *args, "--dry-run"], capsys)
    assert (
        "the teacher predicts 10 classes but cifar100" in err and "has 100" in err and "trained on this data set" in err
    )


def test_teacher_state_dict_of_10_classes_for_a_cifar100_run(files, capsys):
    args = [
        "cifar100/kd",
        "teacher.model=resnet8",
        f"teacher.checkpoint={files / 'resnet8_c10.pth'}",
        f"data.root={files / 'empty_dir'}",
    ]
    with untouched(files):
        err = fails(["train", *args, "--dry-run"], capsys)
    assert "teacher.checkpoint" in err and "does not fit resnet8 (100 classes, 3 input channels)" in err
    assert "fc.weight: file 10x64, model 100x64" in err


def test_student_checkpoint_of_10_classes_for_a_cifar100_student(files, capsys):
    args = [
        "cifar100/kd",
        "model.student=resnet8",
        f"student.checkpoint={files / 'resnet8_c10.pt'}",
        f"data.root={files / 'empty_dir'}",
    ]
    with untouched(files):
        err = fails(["train", *args, "--dry-run"], capsys)
    assert "student.checkpoint" in err and "fc.weight: file 10x64, model 100x64" in err
    assert "saved from resnet8 (10 classes, 3 input channels)" in err


@needs_fashion_mnist
def test_teacher_of_100_classes_for_fashion_mnist(files, tmp_path, capsys):
    args = ["kd.method=kd", f"teacher.checkpoint={files / 'resnet8_fm100.pt'}", f"output_dir={tmp_path / 'run'}"]
    with untouched(files):
        err = fails(["train", *args], capsys)
    assert "the teacher predicts 100 classes but fashion_mnist has 10" in err


def test_teacher_of_10_classes_for_a_3_class_image_folder(files, image_folder, tmp_path, capsys):
    args = [
        "data.name=imagefolder", f"data.root={image_folder}", "data.image_size=32", "train.batch_size=2",
        "kd.method=kd", f"teacher.checkpoint={files / 'resnet8_c10.pt'}", f"output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    with untouched(files, image_folder):
        err = fails(["train", *args], capsys)
    assert "the teacher predicts 10 classes but imagefolder has 3" in err


# ------------------------------------------------------------------------ 7. checkpoints of another architecture


@needs_fashion_mnist
@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["student.checkpoint={files}/resnet20_fm.pth"],
            ["student.checkpoint", "does not fit resnet8 (10 classes, 1 input channel)", "72 unexpected keys",
             "another architecture", "set model.student"],
        ),
        (
            ["student.checkpoint={files}/resnet20_fm_student.pt"],
            ["student.checkpoint", "does not fit resnet8", "saved from resnet20 (10 classes, 1 input channel)"],
        ),
        (
            ["kd.method=kd", "teacher.model=resnet8", "teacher.checkpoint={files}/resnet20_fm.pth"],
            ["teacher.checkpoint", "does not fit resnet8", "unexpected keys", "set teacher.model"],
        ),
        (
            ["kd.method=kd", "teacher.model=resnet8", "teacher.checkpoint={files}/resnet20_fm_student.pt"],
            ["teacher.checkpoint", "saved from resnet20", "leave teacher.model out"],
        ),
        (
            ["kd.method=kd", "teacher.checkpoint={files}/resnet20_fm.pth"],
            ["teacher.checkpoint", "is not a gpd student file", "also give teacher.model"],
        ),
    ],
    ids=["student-state-dict", "student-file", "teacher-state-dict", "teacher-file", "teacher-without-model"],
)  # fmt: skip
def test_checkpoint_of_another_architecture(args, needles, files, tmp_path, capsys):
    args = [a.replace("{files}", str(files)) for a in args]
    with untouched(files):
        err = fails(["train", *args, f"output_dir={tmp_path / 'run'}"], capsys)
    for needle in needles:
        assert needle in err


# ------------------------------------------------------------------------ 8. unreadable and missing checkpoints

CHECKPOINT_USERS = {
    "student.checkpoint": (["train", "student.checkpoint={path}", "output_dir={tmp}/run"], "student.checkpoint"),
    "teacher.checkpoint": (
        ["train", "kd.method=kd", "teacher.checkpoint={path}", "output_dir={tmp}/run"],
        "teacher.checkpoint",
    ),
    "teacher.checkpoint+model": (
        ["train", "kd.method=kd", "teacher.model=resnet20", "teacher.checkpoint={path}", "output_dir={tmp}/run"],
        "teacher.checkpoint",
    ),
    "eval": (["eval", "{path}"], ""),
    "export": (["export", "{path}", "--format", "safetensors"], ""),
}
BROKEN_FILES = {
    "garbage.pt": "not a file written by torch.save",
    "empty.pt": "the file is empty",
    "truncated.pt": "the archive torch.save writes is corrupt or truncated",
    "pickled_module.pt": "holds pickled Python objects (gpd.models.cifar_resnet.CifarResNet)",
}


@pytest.mark.parametrize("user", CHECKPOINT_USERS)
@pytest.mark.parametrize("broken", BROKEN_FILES)
def test_unreadable_checkpoint(user, broken, files, tmp_path, capsys):
    argv, key = CHECKPOINT_USERS[user]
    path = files / broken
    argv = [a.replace("{path}", str(path)).replace("{tmp}", str(tmp_path)) for a in argv]
    with untouched(files):
        err = fails(argv, capsys)
    assert f"cannot read {key}" in err and str(path) in err and BROKEN_FILES[broken] in err
    assert "weights_only" not in err  # torch's advice to load untrusted code is not passed on


@pytest.mark.parametrize("user", CHECKPOINT_USERS)
@pytest.mark.parametrize("missing", ["missing.pt", "empty_dir"])
def test_missing_checkpoint(user, missing, files, tmp_path, capsys):
    argv, key = CHECKPOINT_USERS[user]
    path = files / missing
    argv = [a.replace("{path}", str(path)).replace("{tmp}", str(tmp_path)) for a in argv]
    with untouched(files):
        err = fails(argv, capsys)
    shown = path / "student.pt" if path.is_dir() else path  # a run directory's student.pt
    if user in ("eval", "export"):
        assert f"no exported student at {shown}" in err
    else:
        assert (
            f"{key} {shown} does not exist" in err and "a run directory, a gpd student.pt or a state_dict file" in err
        )


@pytest.mark.parametrize(
    "args",
    [
        ["student.checkpoint={files}/garbage.pt"],
        ["kd.method=kd", "teacher.checkpoint={files}/garbage.pt"],
        ["kd.method=kd", "teacher.model=resnet20", "teacher.checkpoint={files}/garbage.pt"],
    ],
    ids=["student", "teacher", "teacher+model"],
)
def test_dry_run_checks_a_checkpoint_that_exists(args, files, tmp_path, monkeypatch, capsys):
    # a dry run lets random weights stand in for a missing checkpoint, not for a broken one
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{files}", str(files)) for a in args]
    with untouched(files):
        err = fails(["train", *args, f"data.root={files / 'empty_dir'}", "--dry-run"], capsys)
    assert f"{files / 'garbage.pt'}: not a file written by torch.save" in err
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_file_that_is_no_student(files, capsys):
    with untouched(files):
        err = fails(["export", str(files / "resnet8_c10.pth"), "--format", "safetensors"], capsys)
    assert "is not a gpd student file" in err


# ------------------------------------------------------------------------ 9. existing output_dir


@pytest.fixture()
def old_run(tmp_path) -> Path:
    run = tmp_path / "old_run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 7\n")
    (run / "metrics.csv").write_text("epoch,student_acc\n1,91.5\n")
    (run / "student.pt").write_bytes(b"the student of a finished run")
    (run / "checkpoint.pt").write_bytes(b"its checkpoint")
    return run


def test_existing_output_dir_is_refused_and_kept(old_run, capsys):
    with untouched(old_run):
        err = fails(["train", f"output_dir={old_run}", "train.epochs=1"], capsys)
    assert "already holds a run" in err and str(old_run) in err


def test_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with untouched(tmp_path):
        err = fails(["train", f"output_dir={target}"], capsys)
    assert f"output_dir {target} exists and is not a directory" in err


def test_bad_input_with_overwrite_keeps_the_old_run(old_run, files, capsys):
    with untouched(old_run):
        fails(["train", f"output_dir={old_run}", f"student.checkpoint={files / 'missing.pt'}", "--overwrite"], capsys)


@pytest.mark.parametrize("bad", ["student.checkpoint={files}/missing.pt", "data.root={files}/empty_dir"])
def test_failed_start_leaves_no_output_dir(bad, files, tmp_path, capsys):
    fails(["train", bad.replace("{files}", str(files)), f"output_dir={tmp_path / 'run'}"], capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ 10. ratio


@pytest.mark.parametrize("ratio", ["0.5", "0", "-2", "nan", "inf"])
def test_ratio_below_1(ratio, tmp_path, capsys):
    err = fails(["train", f"gpd.ratio={ratio}", f"output_dir={tmp_path / 'run'}"], capsys)
    assert "gpd.ratio must be >= 1" in err and f"got {ratio}" in err
    assert not (tmp_path / "run").exists()


def test_ratio_1_is_allowed():
    # >= 1, not > 1: at ratio 1 the dynamic teacher is an exact copy of the student
    assert load_config(None, ["gpd.ratio=1"]).gpd.ratio == 1.0


@pytest.mark.parametrize(
    "ratio, message", [("0.5", "ratio must be >= 1"), ("-1", "ratio must be >= 1"), ("nan", "ratio must be a number")]
)
def test_expand_ratio_below_1(ratio, message, capsys):
    err = fails(["expand", "resnet8", "--ratio", ratio], capsys)
    assert message in err and f"got {ratio}" in err


def test_expand_ratio_1_is_allowed(capsys):
    assert main(["expand", "resnet8", "--ratio", "1"]) == 0
    assert "ratio 1" in capsys.readouterr().out


# ------------------------------------------------------------------------ 11. unknown commands and flags


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["train", "--frob"], "unrecognized arguments: --frob"),
        (["eval", "student.pt", "--frob"], "unrecognized arguments: --frob"),
        (["expand", "resnet8", "--frob"], "unrecognized arguments: --frob"),
        (["expand", "resnet8", "--ratio", "two"], "invalid float value: 'two'"),
        (["export", "student.pt", "--format", "tar"], "invalid choice: 'tar'"),
        (["export", "student.pt"], "the following arguments are required: --format"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_unknown_command_or_flag(argv, needle, capsys):
    err = fails(argv, capsys)
    assert needle in err and "gpd --help" in err


def test_console_script_reports_an_unknown_command_in_one_line(tmp_path):
    script = Path(sys.executable).with_name("gpd")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "gpd"]
    result = subprocess.run([*command, "frobnicate"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("gpd: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "invalid choice: 'frobnicate'" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ 12. augmentation keys and pretrained weights


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["data.random_erasing=1.5"], "data.random_erasing must be a probability in [0, 1], got 1.5"),
        (["data.mixup=-1"], "data.mixup must be an alpha >= 0 (0: off), got -1.0"),
        (["data.cutmix=nan"], "data.cutmix must be an alpha >= 0 (0: off), got nan"),
        (["data.mixup_prob=2"], "data.mixup_prob must be a probability in [0, 1], got 2.0"),
        (["data.mixup_switch_prob=-0.1"], "data.mixup_switch_prob must be a probability in [0, 1], got -0.1"),
        (["data.color_jitter=-0.4"], "data.color_jitter must be >= 0 or null, got -0.4"),
        (
            ["data.interpolation=lanczos"],
            "data.interpolation must be bilinear, bicubic, nearest or null, got 'lanczos'",
        ),
        (["data.randaugment=rand-m"], "data.randaugment: 'rand-m' is not a timm auto_augment string"),
        (["data.randaugment=rand-q9"], "Unknown RandAugment config section"),
        (["data.randaugment=fancy"], "Unknown AA policy fancy"),
        (
            ["data.randaugment=rand-m9"],
            "work with imagefolder, cifar10 and cifar100 (colour images), not fashion_mnist",
        ),
        (["data.name=cifar10", "data.random_erasing=0.25", "data.augment=false"], "need data.augment=true"),
        (["data.cutmix=1.0", "train.batch_size=127"], "need an even train.batch_size, got 127"),
        (["student.pretrained=true", "student.checkpoint=x.pt"], "set only one of them"),
    ],
)
def test_bad_augmentation_or_pretrained_keys(overrides, needle, tmp_path, capsys):
    err = fails(["train", *overrides, f"output_dir={tmp_path / 'run'}"], capsys)
    assert needle in err
    assert not (tmp_path / "run").exists()


@needs_fashion_mnist
def test_pretrained_teacher_offline_says_to_give_a_checkpoint(tmp_path, monkeypatch, capsys):
    from urllib.error import URLError

    import torchvision.models as tvm

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvm, "get_model", offline)
    args = [
        "train",
        "kd.method=kd",
        "teacher.model=tv:resnet18",
        "teacher.pretrained=true",
        f"output_dir={tmp_path / 'run'}",
    ]
    err = fails(args, capsys)
    assert "teacher.pretrained: pretrained weights are not available offline" in err
    assert "teacher.checkpoint=FILE" in err and not (tmp_path / "run").exists()
