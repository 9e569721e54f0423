"""`gpd train CONFIG --dry-run` works for every bundled config and leaves nothing behind."""

from __future__ import annotations

import pytest

from gpd.cli.main import main
from gpd.config import bundled_config_names

# The ImageNet configs build ImageNet-sized networks (D of ResNet-34 holds 168M parameters): a dry
# run of one takes 15-50 s here. The default suite keeps one CNN pair with branches and ReviewKD and
# one transformer pair; the other ImageNet configs run with the slow tests (make test-slow).
DEFAULT_IMAGENET = {"imagenet/r34_r18_reviewkd_gpd", "imagenet/rvt_s_rvt_ti_dkd_gpd"}
CONFIGS = [
    pytest.param(name, marks=pytest.mark.slow)
    if name.startswith("imagenet/") and name not in DEFAULT_IMAGENET
    else name
    for name in bundled_config_names()
]


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_of_bundled_config(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # configs write to runs/...: a dry run must not
    assert main(["train", name, "--dry-run"]) == 0
    assert f"dry run of {name} passed" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_uses_a_labelled_synthetic_stand_in_for_missing_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPD_DATA", str(tmp_path / "nothing"))
    assert main(["train", "data.name=cifar100", "model.student=resnet8x4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC stand-in" in out and "100 classes" in out
