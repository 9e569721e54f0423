"""The task contract of the Distiller: ``task="classification"`` (the default), ``"segmentation"``, a
user's :class:`gpd.Task`; how KD methods compose with a task; the metrics, against values by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpd
from gpd.distill import TASKS, ClassificationTask, Distiller, SegmentationTask, Task, task_class
from gpd.distill.kd_methods import HintonKD, HintonKDOptions
from gpd.distill.tasks import ChannelWiseKD, PixelDKD, PixelKD, SegmentationMetrics, TopOneAccuracy, make_task
from gpd.errors import ArgumentError
from gpd.losses import CWD_LOSS_WEIGHT, channel_wise_kd, pixel_cross_entropy, pixel_dkd, pixel_kd, pixel_sce, sce

pytestmark = pytest.mark.usefixtures("torch_single_thread")

THIS_FILE = Path(__file__).resolve()


class TinySeg(nn.Module):
    """A fully convolutional net: logits ``(N, classes, H / stride, W / stride)``; ``aux=True``: a dict
    ``{"out", "aux"}`` as torchvision's segmentation models return."""

    def __init__(self, classes: int = 3, stride: int = 1, aux: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=stride, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)
        self.aux_head = nn.Conv2d(8, classes, 1) if aux else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        h = self.body(x)
        if self.aux_head is None:
            return self.head(h)
        return {"out": self.head(h), "aux": self.aux_head(h)}


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    )


def batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    y = torch.randint(0, 3, (2, size, size))
    y[0, :2] = 255
    return torch.randn(2, 3, size, size), y


def test_classification_is_the_default_and_its_terms_are_the_formulas() -> None:
    torch.manual_seed(0)
    distiller = Distiller(classifier(), input_size=(3, 8, 8), label_smoothing=0.1)
    assert isinstance(distiller.task, ClassificationTask) and distiller.task.label_smoothing == 0.1
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    losses, logits = distiller(x, y)
    assert list(losses) == ["ce_dynamic", "ce_student", "sce"]
    z_d = distiller.dynamic_logits(x)
    assert torch.equal(losses["ce_student"], F.cross_entropy(logits, y, label_smoothing=0.1))
    assert torch.equal(losses["ce_dynamic"], F.cross_entropy(z_d, y, label_smoothing=0.1))
    assert torch.equal(losses["sce"], 3.0 * sce(logits, z_d.detach(), eps=0.1))


def test_segmentation_terms_are_the_per_pixel_losses() -> None:
    torch.manual_seed(0)
    distiller = Distiller(TinySeg(), task="segmentation", input_size=(3, 8, 8))
    x, y = batch()
    losses, logits = distiller(x, y)
    assert logits.shape == (2, 3, 8, 8) and list(losses) == ["ce_dynamic", "ce_student", "sce"]
    z_d = distiller.dynamic_logits(x)
    assert torch.allclose(losses["ce_student"], pixel_cross_entropy(logits, y))
    assert torch.allclose(losses["ce_dynamic"], pixel_cross_entropy(z_d, y))
    assert torch.allclose(losses["sce"], 3.0 * pixel_sce(logits, z_d))


def test_aux_output_gets_the_supervised_loss_with_its_weight_and_logits_are_resized_to_the_mask() -> None:
    torch.manual_seed(0)
    distiller = Distiller(
        TinySeg(stride=2, aux=True), task="segmentation", task_options={"aux_weight": 0.4}, input_size=(3, 8, 8)
    )
    x, y = batch()
    losses, logits = distiller(x, y)
    assert list(losses) == ["ce_dynamic", "ce_aux_dynamic", "ce_student", "ce_aux_student", "sce"]
    assert logits.shape == (2, 3, 4, 4)  # the model's size: resized for the losses only
    out = distiller.network.forward_student(x)
    up = F.interpolate(out["aux"], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(losses["ce_aux_student"], 0.4 * pixel_cross_entropy(up, y))
    up = F.interpolate(out["out"], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(losses["ce_student"], pixel_cross_entropy(up, y))
    no_aux = Distiller(TinySeg(aux=True), task=SegmentationTask(aux_weight=0.0), input_size=(3, 8, 8))
    assert "ce_aux_student" not in no_aux(x, y).losses


def test_a_task_on_logits_of_the_wrong_shape_is_refused_in_one_line() -> None:
    x, y = batch()
    seg_on_classifier = Distiller(classifier(), task="segmentation", input_size=(3, 8, 8))
    with pytest.raises(ArgumentError, match=r"^task='segmentation' needs .*use task='classification'$"):
        seg_on_classifier(x, y)
    classify_a_map = Distiller(TinySeg(), input_size=(3, 8, 8))
    with pytest.raises(ArgumentError, match=r"^task='classification' needs .*use task='segmentation'$"):
        classify_a_map(x, torch.tensor([0, 1]))


@pytest.mark.parametrize(("kd", "cls"), [("kd", PixelKD), ("dkd", PixelDKD), ("cwd", ChannelWiseKD)])
def test_segmentation_maps_kd_methods_to_their_per_pixel_versions(kd: str, cls: type) -> None:
    torch.manual_seed(0)
    teacher = TinySeg(stride=2)
    distiller = Distiller(TinySeg(), teacher, kd=kd, task="segmentation", input_size=(3, 8, 8))
    assert type(distiller.kd_method) is cls
    x, y = batch()
    losses, logits = distiller(x, y, epoch=100.0)
    z_t = teacher(x)
    expected = {
        "kd": pixel_kd(logits, z_t, 1.0),  # per-pixel KD's temperature defaults to 1 (Liu et al.)
        "dkd": pixel_dkd(logits, z_t, y),
        "cwd": CWD_LOSS_WEIGHT * channel_wise_kd(logits, z_t),
    }[kd]
    assert torch.allclose(losses["kd_student"], expected)
    assert torch.isfinite(losses["kd_dynamic"])


def test_a_classification_kd_object_becomes_its_per_pixel_version_with_its_options() -> None:
    method = make_task("segmentation").kd_method(HintonKD(HintonKDOptions(temperature=2.0, weight=0.5)))
    assert type(method) is PixelKD and (method.options.temperature, method.options.weight) == (2.0, 0.5)
    assert make_task("segmentation").kd_method("kd", {"temperature": 3}).options.temperature == 3.0


def test_reviewkd_with_segmentation_and_cwd_with_classification_are_refused() -> None:
    with pytest.raises(ArgumentError, match=r"^kd='reviewkd' is refused with task='segmentation': .*'cwd'$"):
        Distiller(TinySeg(), TinySeg(), kd="reviewkd", task="segmentation", input_size=(3, 8, 8))
    with pytest.raises(ArgumentError, match=r"^kd='cwd' .* needs task='segmentation'$"):
        Distiller(classifier(), classifier(), kd="cwd", input_size=(3, 8, 8))


def test_segmentation_metrics_against_values_by_hand() -> None:
    # labels (one image, 2x3) and predictions; class 2 is never labelled but predicted once
    y = torch.tensor([[[0, 0, 1], [1, 255, 1]]])
    predicted = torch.tensor([[[0, 1, 1], [2, 0, 1]]])
    logits = F.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    metric = SegmentationMetrics()
    metric.update(logits[:, :, :1], y[:, :1])  # in two batches: counts add up
    metric.update(logits[:, :, 1:], y[:, 1:])
    # labelled pixels: 5; right: (0,0)=0, (0,2)=1, (1,2)=1 -> 3/5
    # class 0: TP 1, FP 0 (the ignored pixel does not count), FN 1 -> 1/2
    # class 1: TP 2, FP 1, FN 1 -> 2/4; class 2: TP 0, FP 1 -> 0; mIoU = (1/2 + 1/2 + 0) / 3
    assert metric.compute() == pytest.approx({"miou": 1 / 3, "pixel_acc": 3 / 5})
    with pytest.raises(
        ArgumentError, match=r"^mask holds 3: labels must be classes in \[0, 3\) or the ignore index 255$"
    ):
        metric.update(logits, torch.full_like(y, 3))
    metric.reset()
    assert metric.compute()["miou"] != metric.compute()["miou"]  # nan: nothing seen
    # logits of another size are resized to the mask: one pixel saying class 1 -> class 1 everywhere
    metric.update(torch.tensor([0.0, 1.0, 0.0]).reshape(1, 3, 1, 1), y)
    # class 0: TP 0, FN 2 -> 0; class 1: TP 3, FP 2 -> 3/5; class 2 occurs nowhere: left out of the mean
    assert metric.compute() == pytest.approx({"miou": 0.3, "pixel_acc": 3 / 5})


def test_top1_accuracy_counts_over_batches() -> None:
    metric = TopOneAccuracy()
    metric.update(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    metric.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.8]]))  # a soft target: its argmax
    assert metric.compute() == {"top1": pytest.approx(2 / 3)}
    assert isinstance(make_task("classification").metric(), TopOneAccuracy)
    assert isinstance(make_task("segmentation").metric(), SegmentationMetrics)


class ConstantTask(Task):
    """A task for the registry tests (its losses do not matter)."""

    name = "constant_task"


def test_the_task_registry_follows_the_kd_method_policy() -> None:
    assert list(TASKS) == ["classification", "segmentation"]
    with TASKS.override("constant_task", ConstantTask):
        assert task_class("constant_task") is ConstantTask
        assert isinstance(Distiller(classifier(), task="constant_task").task, ConstantTask)
    assert "constant_task" not in TASKS
    with pytest.raises(ArgumentError, match=r"^task must be classification or segmentation or an import path"):
        task_class("regression")
    with pytest.raises(ArgumentError, match="gpd.Task subclass"):
        gpd.register_task("bad", HintonKD)  # type: ignore[arg-type]
    loaded = task_class(f"{THIS_FILE}:ConstantTask")
    assert loaded.__name__ == "ConstantTask" and TASKS["constant_task"] is loaded
    TASKS.unregister("constant_task")


def test_task_options_and_label_smoothing_are_checked() -> None:
    with pytest.raises(
        ArgumentError, match=r"^unknown segmentation task options \['aux'\]; use ignore_index, aux_weight"
    ):
        make_task("segmentation", {"aux": 0.5})
    with pytest.raises(ArgumentError, match="task_options go with a task name"):
        make_task(SegmentationTask(), {"aux_weight": 0.5})
    with pytest.raises(ArgumentError, match="takes no label_smoothing"):
        make_task(ConstantTask, label_smoothing=0.1)
    with pytest.raises(ArgumentError, match="goes to the task object"):
        make_task(SegmentationTask(), label_smoothing=0.1)
    assert make_task("segmentation", {"label_smoothing": 0.2}, label_smoothing=0.1).label_smoothing == 0.2  # type: ignore[attr-defined]
    assert make_task(SegmentationTask(ignore_index=0)).ignore_index == 0  # type: ignore[attr-defined]
