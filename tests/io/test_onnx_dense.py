"""``gpd export --format onnx`` of a dense student (per-pixel logits ``(N, C, H, W)``): the ONNX gets a
dynamic height and width on its input and its logits, checked with onnxruntime at the recorded size and
32 pixels larger per side; a graph that keeps the traced size is refused and nothing is written. A
classifier's ONNX keeps its fixed height and width (only the batch axis is dynamic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpd.cli.main import main
from gpd.errors import ConfigError
from gpd.io.convert import write_onnx
from gpd.io.student import student_payload
from gpd.models import create_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def save_student_file(model: nn.Module, folder: Path, input_size: list[int]) -> Path:
    """student.pt of ``model`` after two training-mode passes (BatchNorm statistics off their defaults)."""
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(4, *input_size) * 2 + 0.5)
    path = folder / "student.pt"
    torch.save(student_payload(model.eval(), data="fashion_mnist_seg", input_size=input_size), path)
    return path


def onnx_run(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in session.run(None, {"input": x.numpy()})]


def axes(path: Path) -> tuple[list[int | str], list[int | str]]:
    """The input's and the one output's dimensions: a name where dynamic, else the fixed size."""
    graph = onnx.load(str(path)).graph
    assert len(graph.output) == 1

    def dims(value: object) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # type: ignore[attr-defined]

    return dims(graph.input[0]), dims(graph.output[0])


def export(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    assert main(["export", str(path), "--format", "onnx"]) == 0
    return path.with_suffix(".onnx"), capsys.readouterr().out


def assert_equal_at_sizes(target: Path, reference: nn.Module, sizes: list[tuple[int, ...]]) -> None:
    for size in sizes:
        x = torch.randn(*size)
        (got,) = onnx_run(target, x)
        with torch.no_grad():
            expected = reference(x)
        expected = expected["out"] if isinstance(expected, dict) else expected
        assert got.shape == expected.shape == (size[0], 11, *size[-2:])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * max(1.0, float(expected.abs().max())))


def test_seg_resnet8_onnx_has_a_dynamic_height_and_width(tmp_path: Path, capsys):
    torch.manual_seed(0)
    path = save_student_file(create_model("seg_resnet8", num_classes=11, in_chans=1), tmp_path, [1, 32, 32])
    target, out = export(path, capsys)
    assert "onnxruntime matches PyTorch at input sizes 1x32x32 and 1x64x64 (dynamic height and width)" in out
    assert out.count("e-0") >= 2  # two max abs diffs, one a size
    assert axes(target) == (["batch", 1, "height", "width"], ["batch", 11, "height", "width"])
    model = create_model("seg_resnet8", num_classes=11, in_chans=1)
    model.load_state_dict(torch.load(path, weights_only=False)["state_dict"], strict=True)
    assert_equal_at_sizes(target, model.eval(), [(2, 1, 32, 32), (3, 1, 64, 64), (1, 1, 48, 80)])


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("lraspp_mobilenet_v3_large", {}), ("deeplabv3_mobilenet_v3_large", {"aux_loss": True})],
)
def test_torchvision_segmentation_onnx_is_its_out_logits_at_any_size(arch: str, kwargs: dict, tmp_path: Path, capsys):
    import torchvision

    torch.manual_seed(0)
    student = create_model(f"tv:{arch}", num_classes=11, in_chans=3, **kwargs)
    path = save_student_file(student, tmp_path, [3, 28, 28])
    target, out = export(path, capsys)
    assert "onnxruntime matches PyTorch at input sizes 3x28x28 and 3x60x60" in out, out
    inputs, logits = axes(target)  # one output: "out" (the class axis of a Resize has no inferred size)
    assert inputs == ["batch", 3, "height", "width"] and [logits[i] for i in (0, 2, 3)] == ["batch", "height", "width"]
    fresh = getattr(torchvision.models.segmentation, arch)(
        num_classes=11, weights=None, weights_backbone=None, **kwargs
    )
    fresh.load_state_dict(torch.load(path, weights_only=False)["state_dict"], strict=True)
    assert_equal_at_sizes(target, fresh.eval(), [(2, 3, 28, 28), (1, 3, 60, 60), (2, 3, 45, 70)])


def test_a_classifiers_onnx_keeps_its_fixed_height_and_width(tmp_path: Path, capsys):
    torch.manual_seed(0)
    path = save_student_file(create_model("resnet8", num_classes=10, in_chans=1), tmp_path, [1, 28, 28])
    target, out = export(path, capsys)
    assert "onnxruntime matches PyTorch: max abs diff" in out and "dynamic height" not in out
    assert axes(target) == (["batch", 1, 28, 28], ["batch", 10])


class BakedSize(nn.Module):
    """Up-samples to the input size read as Python ints: the tracer records them as constants."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 11, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return F.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


class BranchOnSize(nn.Module):
    """Takes another Python branch above 40 pixels: the graph traced at 28 has the same shape at 60
    but other values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 11, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + 1 if x.shape[-1] > 40 else y


def test_a_graph_that_keeps_the_traced_size_is_refused_and_nothing_is_written(tmp_path: Path):
    target = tmp_path / "student.onnx"
    with pytest.raises(ConfigError) as err:
        write_onnx({}, BakedSize(), target, (1, 28, 28))
    message = str(err.value)
    assert "\n" not in message and "dynamic height and width" in message and "1x60x60" in message
    assert "(2, 11, 28, 28)" in message  # what the graph gives at the second size
    assert list(tmp_path.iterdir()) == []  # no file, no temporary


def test_a_mismatch_at_the_second_size_is_reported(tmp_path: Path):
    note = write_onnx({}, BranchOnSize(), tmp_path / "student.onnx", (1, 28, 28))
    assert note.startswith("onnxruntime DIFFERS FROM PyTorch at input sizes 1x28x28 and 1x60x60"), note
    first, second = note.split("max abs diff ")[1].split(" (")[0].split(" and ")
    assert float(first) < 1e-5 and float(second) == pytest.approx(1.0, abs=1e-5)
