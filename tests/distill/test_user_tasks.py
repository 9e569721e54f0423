"""Tasks through the API: a user's own :class:`gpd.Task` (multi-label classification with BCE, a
regression head with MSE), each defined in this file, and segmentation on a tiny net with a
transposed-convolution decoder and on torchvision's LR-ASPP with its dict output. Each trains a few
SGD steps with finite losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpd
from gpd.distill import Distiller, Task
from gpd.distill.tasks import Metric, SegmentationMetrics

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class MultiLabelTask(Task):
    """Multi-label classification: targets ``(N, K)`` in {0, 1}, one sigmoid per label.

    Supervised: BCE with logits. Consistency: BCE of the student's sigmoids against D's
    (detached), the per-label analogue of GPD's SCE (a softmax over labels would make them compete)."""

    name = "multilabel"
    loss_name = "bce"
    consistency_name = "bce_consistency"

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y)

    def consistency(self, student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(student_logits, torch.sigmoid(dynamic_logits.detach()))


class RegressionTask(Task):
    """A regression head: MSE to the targets, and MSE between the student's and D's (detached) outputs."""

    name = "regression"
    loss_name = "mse"
    consistency_name = "mse_consistency"

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits, y)

    def consistency(self, student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float) -> torch.Tensor:
        return F.mse_loss(student_logits, dynamic_logits.detach())

    def metric(self) -> Metric:
        return MeanSquaredError()


class MeanSquaredError(Metric):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.total += float(((logits.detach() - y) ** 2).sum())
        self.count += y.numel()

    def compute(self) -> dict[str, float]:
        return {"mse": self.total / self.count}


def mlp(outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, outputs))


def train(distiller: Distiller, x: object, y: torch.Tensor, steps: int = 4) -> list[dict[str, float]]:
    """A few SGD steps; each step's loss terms."""
    optimizer = torch.optim.SGD(distiller.param_groups(weight_decay=0.0), lr=0.05, momentum=0.9)
    seen = []
    for _ in range(steps):
        out = distiller(x, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        seen.append({name: float(value.detach()) for name, value in out.losses.items()})
    return seen


def assert_finite(seen: list[dict[str, float]], names: list[str]) -> None:
    assert all(list(step) == names for step in seen), seen[0]
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in seen)


def test_multilabel_bce_task_trains() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8, 5)).float()
    distiller = Distiller(mlp(5), task=MultiLabelTask, input_size=(6,))
    seen = train(distiller, x, y)
    assert_finite(seen, ["bce_dynamic", "bce_student", "bce_consistency"])
    assert seen[-1]["bce_student"] < seen[0]["bce_student"]


def test_regression_mse_task_trains_and_has_its_metric() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 6)
    y = x[:, :2] * 0.5
    gpd.register_task("regression", RegressionTask)
    try:
        distiller = Distiller(mlp(2), task="regression", input_size=(6,))
        seen = train(distiller, x, y)
    finally:
        gpd.distill.TASKS.unregister("regression")
    assert_finite(seen, ["mse_dynamic", "mse_student", "mse_consistency"])
    assert seen[-1]["mse_student"] < seen[0]["mse_student"]
    metric = distiller.task.metric()
    metric.update(distiller.eval().student_logits(x), y)
    assert metric.compute()["mse"] >= 0


class UpNet(nn.Module):
    """A tiny encoder-decoder: a strided conv down, a transposed conv back up to the input size."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.up(self.down(x))))


def segmentation_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    y = torch.randint(0, 3, (2, size, size))
    y[:, :3] = 255  # unlabelled rows
    return torch.randn(2, 3, size, size), y


def test_segmentation_with_a_transposed_conv_decoder_trains() -> None:
    torch.manual_seed(0)
    distiller = Distiller(UpNet(), UpNet(), kd="cwd", task="segmentation", input_size=(3, 16, 16))
    x, y = segmentation_batch(16)
    seen = train(distiller, x, y)
    assert_finite(seen, ["ce_dynamic", "kd_dynamic", "ce_student", "kd_student", "sce"])


def test_segmentation_on_torchvision_lraspp_with_its_dict_output() -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(num_classes=3, weights=None, weights_backbone=None)
    distiller = Distiller(model, task="segmentation", input_size=(3, 32, 32))
    x, y = segmentation_batch(32)
    seen = train(distiller, x, y, steps=2)
    assert_finite(seen, ["ce_dynamic", "ce_student", "sce"])
    metric = distiller.task.metric()
    assert isinstance(metric, SegmentationMetrics)
    with torch.no_grad():
        metric.update(distiller.eval().student_logits(x), y)
    scores = metric.compute()
    assert (
        0.0 <= scores["miou"] <= 1.0 and 0.0 <= scores["pixel_acc"] <= 1.0
    )  # golden values: tests/distill/test_tasks.py
