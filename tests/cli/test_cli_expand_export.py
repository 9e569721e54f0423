"""``gpd expand`` (report of the dynamic teacher) and ``gpd export`` (pt, safetensors, onnx)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import gpd
from gpd.cli.expand_cmd import parse_kwargs
from gpd.cli.main import main
from gpd.io.student import student_payload
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpd: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def report_value(out: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}\s+(.*)$", out, flags=re.M)
    assert match, f"no line {label!r} in:\n{out}"
    return match.group(1)


def costs(out: str, label: str) -> tuple[int, float]:
    params, gflops = report_value(out, label).split()
    return int(params.replace(",", "")), float(gflops)


# ------------------------------------------------------------------------ gpd expand


def test_expand_resnet8_reports_costs_verification_roles_and_rules(capsys):
    assert main(["expand", "resnet8", "--ratio", "2"]) == 0
    out = capsys.readouterr().out
    s_params, s_gflops = costs(out, "student S")
    d_params, d_gflops = costs(out, "dynamic D")
    assert s_params == sum(p.numel() for p in create_model("resnet8", 10, 3).parameters())
    assert 3.8 < d_params / s_params < 4.0  # r^2, less at the unexpanded input and output layers
    assert 0 < s_gflops < d_gflops and 3.5 < d_gflops / s_gflops <= 4.0
    assert "parameters" in out and "GFLOPs/image" in out
    ratios = report_value(out, "D / S").split()
    assert len(ratios) == 2 and all(r.endswith("x") for r in ratios)
    assert report_value(out, "verification").startswith("passed")
    assert "tolerance 1e-04" in out
    assert report_value(out, "input layers") == "conv1"
    assert report_value(out, "output layers") == "fc"
    assert re.search(
        r"^rules\s+expand_conv\s+9\s+conv1, layer1\.0\.conv1, layer1\.0\.conv2, \.\.\. \(\+6\)$", out, re.M
    )
    assert re.search(r"^\s+expand_linear\s+1\s+fc$", out, re.M)
    assert report_value(out, "model").startswith("resnet8, 10 classes, input 3x32x32, ratio 2")


def test_expand_input_size_sets_channels(capsys):
    assert main(["expand", "resnet8", "--input-size", "1", "28", "28", "--num-classes", "5", "--ratio", "1.5"]) == 0
    out = capsys.readouterr().out
    assert report_value(out, "model") == "resnet8, 5 classes, input 1x28x28, ratio 1.5"
    assert report_value(out, "verification").startswith("passed")


def test_expand_timm_resnet18_at_32_pixels(capsys):
    assert main(["expand", "timm:resnet18", "--img-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "input 3x32x32" in report_value(out, "model")
    assert report_value(out, "verification").startswith("passed")
    s_params, _ = costs(out, "student S")
    d_params, _ = costs(out, "dynamic D")
    assert 3.9 < d_params / s_params < 4.0


def test_expand_passes_img_size_to_fixed_size_timm_models(capsys):
    # a ViT built for 224 pixels would not run on 32-pixel images: --img-size must reach it
    assert main(["expand", "timm:vit_tiny_patch16_224", "--img-size", "32"]) == 0
    out = capsys.readouterr().out
    assert report_value(out, "verification").startswith("passed")
    assert "channel_tensors" in out and "cls_token, pos_embed" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["expand", "resnet8", "--kwarg", "width"], "--kwarg expects key=value"),
        (["expand", "resnet8", "--kwarg", "nonsense=1"], "unknown argument"),
        (["expand", "resnet8", "--in-chans", "3", "--input-size", "1", "28", "28"], "disagrees"),
    ],
)
def test_expand_errors_are_one_line(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in one_line_error(capsys)


def test_kwarg_values_are_python_literals():
    assert parse_kwargs(["a=0.1", "b=[32, 64]", "c=gelu", "d=True", "e="]) == {
        "a": 0.1,
        "b": [32, 64],
        "c": "gelu",
        "d": True,
        "e": "",
    }


# ------------------------------------------------------------------------ gpd export


@pytest.fixture()
def student_file(tmp_path: Path) -> Path:
    """A student.pt written without training; BatchNorm statistics moved off their defaults."""
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 1)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(8, 1, 28, 28) * 2 + 0.5)
    path = tmp_path / "run" / "student.pt"
    path.parent.mkdir()
    torch.save(student_payload(model.eval(), data="fashion_mnist", input_size=[1, 28, 28]), path)
    return path


def reference_output(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return gpd.load_student(path)(x)


def test_export_safetensors_round_trip(student_file: Path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    assert main(["export", str(student_file.parent), "--format", "safetensors"]) == 0
    target = student_file.with_suffix(".safetensors")
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {target} (safetensors, ") and "kB)" in out
    fresh = create_model("resnet8", 10, 1)
    fresh.load_state_dict(load_file(target), strict=True)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), reference_output(student_file, x))
    with safe_open(target, framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["gpd_spec"]) == {"name": "resnet8", "num_classes": 10, "in_chans": 1, "kwargs": {}}
    assert json.loads(metadata["gpd_metadata"])["input_size"] == [1, 28, 28]


def onnx_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnx
    import onnxruntime

    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = max(float(expected.abs().max()), 1.0)
    assert float((got - expected).abs().max()) <= 1e-4 * scale


def test_export_onnx_matches_pytorch_on_another_batch_size(student_file: Path, capsys):
    assert main(["export", str(student_file), "--format", "onnx"]) == 0
    target = student_file.with_suffix(".onnx")
    out = capsys.readouterr().out
    assert f"wrote {target} (onnx, " in out and "onnxruntime matches PyTorch" in out
    x = torch.randn(3, 1, 28, 28)  # traced at batch 2: the batch axis must be dynamic
    assert_close_to_scale(onnx_outputs(target, x), reference_output(student_file, x))


def test_export_never_overwrites_without_the_flag(student_file: Path, capsys):
    target = student_file.with_suffix(".safetensors")
    target.write_bytes(b"precious")
    assert main(["export", str(student_file), "--format", "safetensors"]) == 2
    assert "already exists" in one_line_error(capsys)
    assert target.read_bytes() == b"precious"
    assert main(["export", str(student_file), "--format", "safetensors", "--overwrite"]) == 0
    assert target.read_bytes() != b"precious"
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_export_pt_copies_a_loadable_student(student_file: Path, tmp_path: Path, capsys):
    copy = tmp_path / "elsewhere" / "copy.pt"
    assert main(["export", str(student_file.parent), "--format", "pt", "--output", str(copy)]) == 0
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(gpd.load_student(copy)(x), reference_output(student_file, x))
    capsys.readouterr()
    # the default output of pt is the input itself: refused even with --overwrite
    assert main(["export", str(student_file), "--format", "pt", "--overwrite"]) == 2
    assert "is the input file" in one_line_error(capsys)


def test_export_onnx_needs_an_input_size(tmp_path: Path, capsys):
    path = tmp_path / "student.pt"
    torch.save(student_payload(create_model("resnet8", 10, 1)), path)
    assert main(["export", str(path), "--format", "onnx"]) == 2
    assert "--input-size" in one_line_error(capsys)
    assert not path.with_suffix(".onnx").exists()
    assert main(["export", str(path), "--format", "onnx", "--input-size", "1", "20", "20"]) == 0
    assert_close_to_scale(
        onnx_outputs(path.with_suffix(".onnx"), torch.ones(1, 1, 20, 20)),
        reference_output(path, torch.ones(1, 1, 20, 20)),
    )


def test_export_onnx_of_an_expanded_vit_student(tmp_path: Path, capsys):
    student = create_model("timm:vit_tiny_patch16_224", 10, 3, img_size=32)
    model = gpd.expand(student, 2, input_size=(3, 32, 32))
    with torch.no_grad():  # move D away from the initial copy so the export reads real shared values
        for param in model.dynamic.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    exported = model.export_student().eval()
    path = tmp_path / "student.pt"
    torch.save(student_payload(exported, input_size=[3, 32, 32]), path)
    assert main(["export", str(path), "--format", "onnx"]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model.forward_student(x)
    assert_close_to_scale(onnx_outputs(path.with_suffix(".onnx"), x), expected)
