"""`gpd train CONFIG --dry-run` works for every bundled config and leaves nothing behind."""

from __future__ import annotations

import pytest

from gpd.cli.main import main
from gpd.config import bundled_config_names


@pytest.mark.parametrize("name", bundled_config_names())
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
