"""Convert an exported student (student.pt) to a deployable format (``gpd export``).

* ``pt``: the gpd student.pt format again (checked by rebuilding the model), to copy
  a student out of a run directory;
* ``safetensors``: the state_dict, with the architecture spec as JSON in the
  metadata (key ``gpd_spec``) so the weights can be matched to a model without gpd;
* ``onnx``: the eval-mode student with a dynamic batch axis; one output, its logits
  (:func:`~gpd.outputs.logits_of` of a ``ModelOutput``, a dict or a tuple);
* ``hf``: a transformers student's ``save_pretrained`` directory (:mod:`gpd.io.hf_export`).

Every file is written atomically (:mod:`gpd.io.atomic`), and an existing file is never
replaced without ``overwrite``: an export must not destroy a previous one by accident.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpd.errors import ConfigError, first_line
from gpd.io.atomic import atomic_write
from gpd.io.layout import EXPORT_SUFFIXES, export_path, student_file_of
from gpd.io.student import read_student_file, save_student, student_from_payload
from gpd.outputs import logits_of

FORMATS = EXPORT_SUFFIXES
ONNX_OPSET = 17
ONNX_CHECK_BATCH = 2
ONNX_TOLERANCE = 1e-4  # relative to the output scale (at least 1)


class LogitsOnly(nn.Module):
    """A model whose output is not a tensor (a ``ModelOutput``, a dict, a tuple), exported with its
    logits as the one output (:func:`~gpd.outputs.logits_of`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


@dataclass(frozen=True)
class ExportResult:
    """What ``gpd export`` wrote, for the printed summary."""

    path: Path
    format: str
    size: int
    note: str = ""


def resolve_output(source: Path, fmt: str, output: str | Path | None, overwrite: bool) -> Path:
    """The file to write; refuse the input itself and, unless ``overwrite``, any existing file."""
    target = export_path(source, fmt) if output is None else Path(output)
    if target.is_dir():
        target = target / export_path(source, fmt).name
    if target.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"{target} is the input file; choose another file with --output")
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; choose another file with --output or pass --overwrite")
    return target


def write_pt(payload: dict[str, Any], model: nn.Module, target: Path, input_size: Sequence[int] | None) -> str:
    """The payload as read (spec, state_dict, metadata), after ``model`` proved it loads."""
    save_student(payload, target)
    return ""


def safetensors_metadata(payload: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata is str -> str: the spec and the student's metadata as JSON."""
    return {
        "format": str(payload.get("format", "")),
        "gpd_spec": json.dumps(payload["spec"], sort_keys=True),
        "gpd_metadata": json.dumps(payload.get("metadata") or {}, sort_keys=True, default=str),
    }


def write_safetensors(payload: dict[str, Any], model: nn.Module, target: Path, input_size: Sequence[int] | None) -> str:
    """The state_dict; each tensor cloned contiguous because safetensors refuses shared storage."""
    from safetensors.torch import save_file

    tensors = {name: value.detach().contiguous().clone() for name, value in model.state_dict().items()}
    metadata = safetensors_metadata(payload)
    atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return ""


def onnx_input_size(payload: dict[str, Any], input_size: Sequence[int] | None) -> tuple[int, ...]:
    """The size of one sample: --input-size if given, else the student file's metadata."""
    if input_size is not None:
        return tuple(int(s) for s in input_size)
    recorded = (payload.get("metadata") or {}).get("input_size")
    if not recorded:
        raise ConfigError("the student file records no input size; pass --input-size C H W")
    return tuple(int(s) for s in recorded)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter and a dynamic batch axis.

    The torch.export-based exporter (the default since torch 2.9) needs the
    ``onnxscript`` package; the TorchScript one needs nothing beyond torch and still
    exports every model gpd builds. Its deprecation notice and tracer warnings are
    silenced because the export is checked numerically with onnxruntime instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def onnx_difference(path: Path, model: nn.Module, example: torch.Tensor) -> str:
    """How far onnxruntime's output is from PyTorch's on ``example``, as a short note."""
    try:
        import onnxruntime
    except ImportError:
        return "not checked: onnxruntime is not installed"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": example.numpy()})[0])
    with torch.no_grad():
        expected = logits_of(model(example))
    diff = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    verdict = "matches" if diff <= ONNX_TOLERANCE * max(scale, 1.0) else "DIFFERS FROM"
    return f"onnxruntime {verdict} PyTorch: max abs diff {diff:.1e} (output scale {scale:.1e})"


def write_onnx(payload: dict[str, Any], model: nn.Module, target: Path, input_size: Sequence[int] | None) -> str:
    """ONNX of the eval-mode student, traced at batch 2 so no size-1 batch gets baked in."""
    size = onnx_input_size(payload, input_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((ONNX_CHECK_BATCH, *size), generator=generator)
    model.eval()
    try:
        with torch.no_grad():
            output = model(example)
    except Exception as err:
        raise ConfigError(
            f"the student does not run on inputs of size {'x'.join(map(str, size))}: {first_line(err)}"
        ) from None
    logits_of(output)  # an output without logits is refused before anything is written
    exported = model if isinstance(output, torch.Tensor) else LogitsOnly(model)  # a tensor: exported as it is
    atomic_write(target, lambda tmp: export_onnx(exported, example, tmp))
    return onnx_difference(target, model, example)


WRITERS: dict[str, Callable[[dict[str, Any], nn.Module, Path, Sequence[int] | None], str]] = {
    "pt": write_pt,
    "safetensors": write_safetensors,
    "onnx": write_onnx,
}


def export_student(
    path: str | Path,
    fmt: str,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    input_size: Sequence[int] | None = None,
) -> ExportResult:
    """Convert the student at ``path`` (student.pt or a run directory) to ``fmt``.

    The student is rebuilt from its spec and loaded strictly before anything is
    written, so a corrupt or mismatched file fails with CheckpointError.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = student_file_of(path)
    payload = read_student_file(source)
    if fmt == "hf":  # a save_pretrained directory (gpd.io.hf_export)
        from gpd.io import hf_export

        folder = export_path(source, fmt) if output is None else Path(output)
        hf_export.check_target(folder, source, overwrite)
        note = hf_export.write_hf(payload, student_from_payload(payload, source), folder, source)
        return ExportResult(path=folder, format=fmt, size=hf_export.folder_size(folder), note=note)
    target = resolve_output(source, fmt, output, overwrite)
    model = student_from_payload(payload, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    note = WRITERS[fmt](payload, model, target, input_size)
    return ExportResult(path=target, format=fmt, size=target.stat().st_size, note=note)
