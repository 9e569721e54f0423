"""Models of your own by import path: trained by gpd train, evaluated and loaded in a new process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpd
from gpd.cli.main import main
from gpd.data import locate
from gpd.io.student import student_payload
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")
needs_fashion_mnist = pytest.mark.skipif(
    not (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (make test installs it)",
)
GPD = str(Path(sys.executable).with_name("gpd"))

CUSTOM_CNN = """
import torch
from torch import nn


class SmallCNN(nn.Module):
    \"\"\"A CNN no registry knows: two conv/BN/ReLU blocks, global pooling, a linear head.\"\"\"

    def __init__(self, num_classes: int, in_chans: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def build_net(num_classes, in_chans, width=16):
    return SmallCNN(num_classes, in_chans, width)
"""


def write_module(folder: Path, name: str = "my_nets") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(CUSTOM_CNN)
    return path


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


@needs_fashion_mnist
def test_train_a_model_from_a_file_then_eval_and_load_it_elsewhere(tmp_path: Path) -> None:
    module = write_module(tmp_path / "code")
    run_dir = tmp_path / "run"
    args = ["train", f"model.student={module}:build_net", "model.kwargs.width=8", "data.train_subset=1024",
            "data.test_subset=512", "train.epochs=1", f"output_dir={run_dir}"]  # fmt: skip
    assert main(args) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = run(GPD, "eval", str(run_dir), "data.test_subset=512", cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"{module}:build_net" in evaluated.stdout and "test accuracy" in evaluated.stdout
    loaded = run(sys.executable, "-c", (
        "import gpd, torch, sys; m = gpd.load_student(sys.argv[1]); "
        "print(type(m).__name__, m.body[0].out_channels, m(torch.zeros(2, 1, 28, 28)).shape)"
    ), str(run_dir / "student.pt"), cwd=elsewhere)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["SmallCNN", "8", "torch.Size([2,", "10])"]


def test_a_dotted_module_on_the_path_is_recorded_and_rebuilt(tmp_path: Path, monkeypatch) -> None:
    write_module(tmp_path / "pkgroot" / "userpkg", "nets")
    (tmp_path / "pkgroot" / "userpkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))
    model = create_model("userpkg.nets:build_net", num_classes=5, in_chans=3, width=4)
    assert model.gpd_spec == {"name": "userpkg.nets:build_net", "num_classes": 5, "in_chans": 3, "kwargs": {"width": 4}}
    torch.save(student_payload(model), tmp_path / "student.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "pkgroot"), os.environ.get("PYTHONPATH", "")])}
    loaded = run(sys.executable, "-c", "import gpd, sys; print(type(gpd.load_student(sys.argv[1])).__name__)",
                 str(tmp_path / "student.pt"), env=env)  # fmt: skip
    assert loaded.returncode == 0 and loaded.stdout.strip() == "SmallCNN", loaded.stderr


def test_a_model_of_your_own_expands_and_exports(tmp_path: Path) -> None:
    module = write_module(tmp_path)
    student = create_model(f"{module}:build_net", num_classes=10, in_chans=1)
    model = gpd.expand(student, 2, input_size=(1, 28, 28))
    assert model.report.dynamic_error < 1e-5
    exported = model.export_student()
    fresh = create_model(f"{module}:build_net", num_classes=10, in_chans=1)
    fresh.load_state_dict(exported.state_dict(), strict=True)
    report = run(GPD, "expand", f"{module}:build_net", "--img-size", "28", "--in-chans", "1")
    assert report.returncode == 0, report.stderr
    assert "verification   passed" in report.stdout and "output layers  head" in report.stdout
