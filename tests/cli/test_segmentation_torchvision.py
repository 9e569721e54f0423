"""torchvision's segmentation models through ``gpd train model.student=tv:NAME data.name=fashion_mnist_seg
task=segmentation``: a few steps train, and the exported student.pt loads strictly into the torchvision
class (first conv for 1 channel) with the outputs of the run's student view (a channel slice of its D).
The aux head (``model.kwargs.aux_loss=true``) gets its own CE terms, weighted by ``task_options.aux_weight``."""

from __future__ import annotations

import csv
import importlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gpd
from gpd.cli.main import main
from gpd.models import create_model
from gpd.training.trainer import Trainer
from helpers import needs_fashion_mnist

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), needs_fashion_mnist]

CANVAS = 28  # the smallest fashion_mnist_seg canvas (one garment)
TINY = [
    "data.name=fashion_mnist_seg", "task=segmentation", f"data.canvas_size={CANVAS}", "data.train_subset=8",
    "data.test_subset=4", "train.batch_size=4", "train.epochs=1", "train.threads=1", "train.grad_probe_every=0",
]  # fmt: skip


@pytest.fixture
def trainers(monkeypatch: pytest.MonkeyPatch) -> list[Trainer]:
    """The Trainer of each ``gpd train`` call, kept after the run so that its D can be read."""
    made: list[Trainer] = []

    class Recorded(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    launch_module = importlib.import_module("gpd.training.launch")  # gpd.training.launch is also the function
    monkeypatch.setattr(launch_module, "Trainer", Recorded)
    return made


def train(arch: str, run: Path, *extra: str) -> dict[str, str]:
    """``gpd train`` of ``tv:arch``; metrics.csv's only row."""
    assert main(["train", f"model.student=tv:{arch}", *TINY, *extra, f"output_dir={run}"]) == 0
    (row,) = csv.DictReader(open(run / "metrics.csv"))
    return row


def torchvision_class(arch: str, **kwargs: Any) -> nn.Module:
    """A fresh ``torchvision.models.segmentation.<arch>`` for 1-channel images: its first Conv2d rebuilt
    with one input channel and otherwise the same hyper-parameters (as ``tv:NAME`` builds it)."""
    import torchvision

    model = getattr(torchvision.models.segmentation, arch)(
        num_classes=11, weights=None, weights_backbone=None, **kwargs
    )
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    one_channel = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,  # type: ignore[arg-type]
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )  # fmt: skip
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, one_channel)
    return model


def assert_export_is_the_student_view(trainer: Trainer, run: Path, arch: str, **kwargs: Any) -> None:
    state = torch.load(run / "student.pt", weights_only=False)["state_dict"]
    fresh = torchvision_class(arch, **kwargs)
    fresh.load_state_dict(state, strict=True)
    pair = trainer.distiller.network
    assert isinstance(pair, gpd.GPDModel)  # the student is a slice of the run's D
    pair.eval()
    x = torch.randn(2, 1, CANVAS, CANVAS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        view, plain = pair.forward_student(x), fresh.eval()(x)
    assert set(view) == set(plain)  # "out", and "aux" with the aux head
    for key in plain:
        scale = max(1.0, float(plain[key].abs().max()))
        torch.testing.assert_close(view[key], plain[key], rtol=0, atol=1e-5 * scale)
    trained = create_model(f"tv:{arch}", num_classes=11, in_chans=1, **kwargs).state_dict()
    assert any(not torch.equal(state[k], trained[k]) for k in trained if k.endswith("weight"))  # weights moved


@pytest.mark.parametrize("arch", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_torchvision_model_trains_and_exports_its_student_view(arch: str, trainers: list[Trainer], tmp_path: Path):
    row = train(arch, tmp_path / arch)
    assert not math.isnan(float(row["miou_student"])) and float(row["loss_ce_student"]) > 0
    assert "loss_ce_aux_student" not in row  # no aux head unless asked
    assert_export_is_the_student_view(trainers[-1], tmp_path / arch, arch)


def test_fcn_resnet50_trains_and_exports_its_student_view(trainers: list[Trainer], tmp_path: Path):
    """The largest: D at r = 2 holds about 4 x 35M parameters (15-18 s and 3.3 GB here; mark it slow past 20 s)."""
    row = train("fcn_resnet50", tmp_path / "fcn")
    assert not math.isnan(float(row["miou_student"]))
    assert_export_is_the_student_view(trainers[-1], tmp_path / "fcn", "fcn_resnet50")


def test_the_aux_head_gets_its_own_losses(trainers: list[Trainer], tmp_path: Path):
    arch = "deeplabv3_mobilenet_v3_large"
    row = train(arch, tmp_path / "aux", "model.kwargs.aux_loss=true", "task_options.aux_weight=0.25")
    assert float(row["loss_ce_aux_student"]) > 0 and float(row["loss_ce_aux_dynamic"]) > 0
    assert_export_is_the_student_view(trainers[-1], tmp_path / "aux", arch, aux_loss=True)


def test_aux_weight_scales_the_aux_terms() -> None:
    """The same batch and weights: ``ce_aux_*`` is ``aux_weight`` times the aux head's CE; 0 drops it."""
    x = torch.randn(2, 1, CANVAS, CANVAS, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 11, (2, CANVAS, CANVAS), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    student = create_model("tv:deeplabv3_mobilenet_v3_large", num_classes=11, in_chans=1, aux_loss=True)
    distiller = gpd.Distiller(student, ratio=2, input_size=(1, CANVAS, CANVAS), task="segmentation",
                              task_options={"aux_weight": 0.5}).eval()  # fmt: skip
    losses = {}
    for weight in (0.5, 2.0, 0.0):
        distiller.task.aux_weight = weight  # type: ignore[attr-defined]  # the option task_options set
        with torch.no_grad():
            losses[weight] = distiller(x, y).losses
    for role in ("student", "dynamic"):
        assert float(losses[0.5][f"ce_aux_{role}"]) > 0
        torch.testing.assert_close(losses[2.0][f"ce_aux_{role}"], 4 * losses[0.5][f"ce_aux_{role}"])
        torch.testing.assert_close(losses[2.0][f"ce_{role}"], losses[0.5][f"ce_{role}"])
        assert f"ce_aux_{role}" not in losses[0.0]
