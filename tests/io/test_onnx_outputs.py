"""The ONNX export reads a model's logits through gpd.outputs.logits_of: a model that returns a
dict, a ModelOutput-like object or a tuple is exported with its logits as the one output, and
onnxruntime's check compares those logits; a tensor-returning model is exported as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gpd.distill
import gpd.distill.output
from gpd.errors import ArgumentError
from gpd.io.convert import write_onnx
from gpd.outputs import logits_of

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

SIZE = (3, 8, 8)


class Net(nn.Module):
    """A small CNN whose output is made by ``wrap`` from its pooled features and logits."""

    def __init__(self, wrap: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> Any:
        pooled = torch.relu(self.conv(x)).mean((2, 3))
        return self.wrap(pooled, self.head(pooled))


class Output:
    """Like transformers' ModelOutput: the logits as an attribute."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


WRAPS = {
    "dict": lambda pooled, logits: {"pooled": pooled, "logits": logits},  # the logits are not the first output
    "model_output": lambda pooled, logits: Output(logits),
    "tuple": lambda pooled, logits: (logits, pooled),
    "tensor": lambda pooled, logits: logits,
}


def _onnx_run(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in session.run(None, {"input": x.numpy()})]


@pytest.mark.parametrize("kind", list(WRAPS))
def test_the_onnx_check_reads_the_logits_of_any_output(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, target = Net(WRAPS[kind]), tmp_path / "student.onnx"
    note = write_onnx({}, model, target, SIZE)
    assert note.startswith("onnxruntime matches PyTorch"), note
    x = torch.randn(3, *SIZE)  # another batch size than the traced one
    (got,) = _onnx_run(target, x)
    with torch.no_grad():
        torch.testing.assert_close(got, logits_of(model(x)), rtol=0, atol=1e-5)
    names = {i.name for i in onnx.load(str(target)).graph.initializer}
    assert ("conv.weight" in names) == (kind == "tensor")  # a tensor model is exported as it is, unwrapped


def test_an_output_without_logits_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = tmp_path / "student.onnx"
    with pytest.raises(ArgumentError, match="cannot find the logits"):
        write_onnx({}, Net(lambda pooled, logits: {"scores": logits}), target, SIZE)
    assert not target.exists()


def test_logits_of_lives_in_the_lowest_layer_and_keeps_its_old_names() -> None:
    assert gpd.distill.logits_of is logits_of and gpd.distill.output.logits_of is logits_of
    from gpd.distill.output import LogitsFn
    from gpd.outputs import LogitsFn as lowest

    assert LogitsFn is lowest
