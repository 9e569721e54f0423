"""Bad input, continued (the rule and the helpers: test_bad_input.py, bad_input.py): class
counts of teacher and student, checkpoints of another architecture, unreadable and missing
checkpoints, an existing output_dir, the ratio, unknown commands, augmentation keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bad_input import fails, make_files, make_image_folder, needs_fashion_mnist, untouched
from gpd.cli.main import main
from gpd.config import load_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Checkpoints of all kinds, built once (no training)."""
    return make_files(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"))


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
