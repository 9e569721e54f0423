"""Convert an exported student (student.pt) to a deployable format (``gpd export``).

* ``pt``: the gpd student.pt format again (checked by rebuilding the model), to copy
  a student out of a run directory;
* ``safetensors``: the state_dict, with the architecture spec as JSON in the
  metadata (key ``gpd_spec``) so the weights can be matched to a model without gpd;
* ``onnx``: the eval-mode student with a dynamic batch axis; one output, its logits
  (:func:`export_logits`: torchvision's ``"out"``, else :func:`~gpd.outputs.logits_of` of a
  ``ModelOutput``, a dict or a tuple). A dense student (per-pixel logits ``(N, C, H, W)``: a
  segmentation model) also gets a dynamic height and width, checked at two sizes
  (:func:`dense_onnx_check`);
* ``hf``: a transformers student's ``save_pretrained`` directory (:mod:`gpd.io.hf_export`).

Every file is written atomically (:mod:`gpd.io.atomic`), and an existing file is never
replaced without ``overwrite``: an export must not destroy a previous one by accident.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
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
# A dense student's second check size: its recorded height and width plus this many pixels. The
# same remainder modulo 32 keeps every stride-2 step (up to stride 32) rounding as it did at the
# traced size, so a model whose Python branches on the size (seg_resnet's resize of an odd skip)
# takes the traced path, while a size baked into the graph as a constant shows up.
ONNX_DENSE_STEP = 32


def export_logits(output: Any) -> torch.Tensor:
    """The one output of the ONNX export: a mapping's ``"out"`` (torchvision's segmentation models,
    whose ``"aux"`` head is for training only), else :func:`~gpd.outputs.logits_of`."""
    if isinstance(output, Mapping) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    return logits_of(output)


def is_dense(example: torch.Tensor, logits: torch.Tensor) -> bool:
    """Per-pixel logits ``(N, C, H, W)`` of an image batch (a segmentation model), not a
    classifier's ``(N, C)`` (nor ``(N, C, 1, 1)``): the export that gets a dynamic height and width."""
    return example.dim() == 4 and logits.dim() == 4 and tuple(logits.shape[-2:]) != (1, 1)


class LogitsOnly(nn.Module):
    """A model whose output is not a tensor (a ``ModelOutput``, a dict, a tuple), exported with its
    logits as the one output (:func:`export_logits`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return export_logits(self.model(x))


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


def dynamic_axes(dense: bool, same_size: bool) -> dict[str, dict[int, str]]:
    """The batch axis, and for a dense student the height and width of the input and the logits
    (named alike when the logits come at the input's size, else ``out_height``/``out_width``)."""
    if not dense:
        return {"input": {0: "batch"}, "logits": {0: "batch"}}
    out = ("height", "width") if same_size else ("out_height", "out_width")
    return {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: out[0], 3: out[1]}}


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, axes: dict[str, dict[int, str]] | None = None
) -> None:
    """torch.onnx.export with the TorchScript exporter and ``axes`` (default: a dynamic batch axis).

    The torch.export-based exporter (the default since torch 2.9) needs the
    ``onnxscript`` package; the TorchScript one needs nothing beyond torch and still
    exports every model gpd builds. Its deprecation notice and tracer warnings are
    silenced because the export is checked numerically with onnxruntime instead. The
    tracer records ``x.shape[-2:]`` as shape operations, so torchvision's up-sampling to
    the input size stays dynamic (checked at a second size for dense students).
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
            dynamic_axes=dynamic_axes(False, True) if axes is None else axes,
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
        expected = export_logits(model(example))
    diff = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    verdict = "matches" if diff <= ONNX_TOLERANCE * max(scale, 1.0) else "DIFFERS FROM"
    return f"onnxruntime {verdict} PyTorch: max abs diff {diff:.1e} (output scale {scale:.1e})"


def run_student(model: nn.Module, example: torch.Tensor, why: str = "") -> Any:
    """The eval-mode student's output on ``example``; a one-line ConfigError if it does not run."""
    try:
        with torch.no_grad():
            return model(example)
    except Exception as err:
        size = "x".join(map(str, example.shape[1:]))
        raise ConfigError(f"the student does not run on inputs of size {size}{why}: {first_line(err)}") from None


def dense_onnx_check(path: Path, model: nn.Module, examples: Sequence[torch.Tensor]) -> str:
    """onnxruntime against PyTorch at each example's size, as one note; a ConfigError where the
    graph fails or gives another shape at a size (a size the tracer baked in as a constant)."""
    try:
        import onnxruntime
    except ImportError:
        return "not checked: onnxruntime is not installed"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes, diffs, scales = [], [], []
    for x in examples:
        size = "x".join(map(str, x.shape[1:]))
        refused = f"cannot export the student with a dynamic height and width: at input size {size}"
        try:
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        except Exception as err:
            raise ConfigError(f"{refused} onnxruntime fails: {first_line(err)}") from None
        with torch.no_grad():
            expected = export_logits(model(x))
        if got.shape != expected.shape:
            raise ConfigError(
                f"{refused} the ONNX graph gives logits {tuple(got.shape)}, PyTorch {tuple(expected.shape)} "
                "(a size traced in as a constant)"
            )
        sizes.append(size)
        diffs.append(float((got - expected).abs().max()))
        scales.append(float(expected.abs().max()))
    within = all(d <= ONNX_TOLERANCE * max(s, 1.0) for d, s in zip(diffs, scales, strict=True))
    return (
        f"onnxruntime {'matches' if within else 'DIFFERS FROM'} PyTorch at input sizes {' and '.join(sizes)} "
        f"(dynamic height and width): max abs diff {' and '.join(f'{d:.1e}' for d in diffs)} "
        f"(output scale {max(scales):.1e})"
    )


def write_onnx(payload: dict[str, Any], model: nn.Module, target: Path, input_size: Sequence[int] | None) -> str:
    """ONNX of the eval-mode student, traced at batch 2 so no size-1 batch gets baked in; a dense
    student's with a dynamic height and width, refused (nothing written) where the graph keeps them fixed."""
    size = onnx_input_size(payload, input_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((ONNX_CHECK_BATCH, *size), generator=generator)
    model.eval()
    output = run_student(model, example)
    logits = export_logits(output)  # an output without logits is refused before anything is written
    exported = model if isinstance(output, torch.Tensor) else LogitsOnly(model).eval()  # a tensor: exported as it is
    if not is_dense(example, logits):
        atomic_write(target, lambda tmp: export_onnx(exported, example, tmp))
        return onnx_difference(target, model, example)
    larger = (*size[:-2], size[-2] + ONNX_DENSE_STEP, size[-1] + ONNX_DENSE_STEP)
    second = torch.randn((ONNX_CHECK_BATCH, *larger), generator=generator)
    run_student(model, second, ", so its ONNX cannot have a dynamic height and width")
    axes = dynamic_axes(True, logits.shape[-2:] == example.shape[-2:])
    notes: list[str] = []

    def write(tmp: Path) -> None:  # checked before it replaces anything: a wrong graph is never written
        export_onnx(exported, example, tmp, axes)
        notes.append(dense_onnx_check(tmp, model, (example, second)))

    atomic_write(target, write)
    return notes[0]


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
