"""The student.pt format: save and load an exported student without the training config.

``student.pt`` holds the student's architecture spec (enough to rebuild it with
:func:`gpd.models.create_model_from_spec`), its state_dict, and what evaluation needs
(data set name, input size). It is read with ``torch.load(weights_only=True)``, so
loading a file runs no code from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpd.errors import CheckpointError, GPDError, first_line
from gpd.io.atomic import atomic_torch_save
from gpd.io.layout import student_file_of
from gpd.models import create_model_from_spec

STUDENT_FORMAT = "gpd-student/1"


def student_payload(student: nn.Module, **metadata: Any) -> dict[str, Any]:
    """The dict saved as student.pt; ``student`` must come from gpd.models.create_model."""
    spec = getattr(student, "gpd_spec", None)
    if spec is None:
        raise CheckpointError(
            f"{type(student).__name__} was not built by gpd.models.create_model, so it cannot be "
            "rebuilt from a file; save its state_dict with torch.save instead"
        )
    return {
        "format": STUDENT_FORMAT,
        "spec": spec,
        "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
        "metadata": metadata,
    }


def save_student(payload: dict[str, Any], path: str | Path) -> None:
    """Write a :func:`student_payload` (or one read back) to ``path``, atomically."""
    atomic_torch_save(payload, path)


def _load_file(path: str | Path, missing: str, unreadable: str) -> tuple[Path, Any]:
    """``torch.load`` (weights only) of a file or of a run directory's student.pt, with one-line errors.

    ``missing`` and ``unreadable`` describe the file in the messages ("{path}" is filled in).
    """
    path = student_file_of(path)
    if not path.is_file():
        raise CheckpointError(missing.format(path=path))
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{unreadable.format(path=path)}: {_why_unreadable(path, err)}") from None


def _why_unreadable(path: Path, err: Exception) -> str:
    """What is wrong with a file torch.load (weights only) refused, in a few words.

    torch's own messages run over many lines and suggest ``weights_only=False``, which
    would run code from the file: not advice to pass on.
    """
    text = str(err)
    if "Unsupported global" in text:
        name = text.split("GLOBAL ", 1)[1].split()[0] if "GLOBAL " in text else "a Python object"
        return (
            f"it holds pickled Python objects ({name}), not only tensors, and gpd does not run code from files; "
            "save the model's state_dict() with torch.save instead"
        )
    if isinstance(err, PermissionError):
        return first_line(err)[:200]
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head == b"PK\x03\x04":  # a zip archive, the format of torch.save
        return "the archive torch.save writes is corrupt or truncated; save or copy it again"
    return "not a file written by torch.save (corrupt, truncated or another format); save or copy it again"


def read_student_file(path: str | Path) -> dict[str, Any]:
    """Read and check a student.pt file (or the one inside a run directory)."""
    path, payload = _load_file(path, "no exported student at {path}", "cannot read {path} as a gpd student file")
    if not is_student_payload(payload):
        raise CheckpointError(f"{path} is not a gpd student file (expected format {STUDENT_FORMAT})")
    return payload


def read_checkpoint(path: str | Path, what: str) -> tuple[Path, Any]:
    """``torch.load`` (weights only) of a checkpoint file or a run directory's student.pt.

    Returns the file read and its content; a missing or unreadable file is a one-line
    :class:`CheckpointError` that names it as ``what`` (e.g. "teacher.checkpoint").
    """
    return _load_file(
        path,
        f"{what} {{path}} does not exist (give a run directory, a gpd student.pt or a state_dict file)",
        f"cannot read {what} {{path}}",
    )


def is_student_payload(payload: Any) -> bool:
    """Whether ``payload`` (read from a file) is a gpd student file's content."""
    return isinstance(payload, dict) and payload.get("format") == STUDENT_FORMAT


def student_from_payload(payload: dict[str, Any], path: str | Path) -> nn.Module:
    """Rebuild the student held by a payload read with :func:`read_student_file`, in eval mode."""
    try:
        model = create_model_from_spec(payload["spec"])
    except GPDError as err:
        raise CheckpointError(f"cannot rebuild the student saved in {path}: {err}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not match the architecture {payload['spec'].get('name')}: "
            f"{_state_dict_mismatch(model, payload['state_dict']) or first_line(err)}"
        ) from None
    return model.eval()


def load_student(path: str | Path) -> nn.Module:
    """Rebuild an exported student from ``student.pt`` (or a run directory), in eval mode."""
    return student_from_payload(read_student_file(path), path)


def load_weights(model: nn.Module, path: str | Path, what: str = "model") -> nn.Module:
    """Load a checkpoint into ``model`` strictly: a run directory, a student.pt or a state_dict file."""
    label = f"{what}.checkpoint" if what in ("student", "teacher") else f"{what} checkpoint"  # the config key
    path, payload = read_checkpoint(path, label)
    state = _state_dict_of(payload)
    if state is None:
        raise CheckpointError(
            f"{label} {path} holds no state_dict (a gpd student.pt, a run directory or a state_dict file)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        saved = _describe(payload.get("spec")) if payload.get("format") == STUDENT_FORMAT else None
        target = _describe(getattr(model, "gpd_spec", None)) or type(model).__name__
        fix = {
            "student": "set model.student to the architecture it was saved from, on data with as many classes and channels",
            "teacher": "set teacher.model to the architecture it was saved from"
            + (", or leave teacher.model out: a gpd student file rebuilds its own architecture" if saved else ""),
        }.get(what, "build the architecture it was saved from")
        raise CheckpointError(
            f"{label} {path} does not fit {target}: {_state_dict_mismatch(model, state) or first_line(err)}; "
            f"it was saved from {saved or 'another architecture or class count'}; {fix}"
        ) from None
    return model


def _describe(spec: Any) -> str | None:
    """'resnet20 (10 classes, 1 input channel)' from a gpd_spec, or None."""
    if not isinstance(spec, dict) or "name" not in spec:
        return None
    chans = spec.get("in_chans", 3)
    return f"{spec['name']} ({spec.get('num_classes', '?')} classes, {chans} input channel{'' if chans == 1 else 's'})"


def _state_dict_mismatch(model: nn.Module, state: dict[str, Any]) -> str:
    """'3 missing keys (a, b, ...), 1 shape mismatch (fc.weight: file 10x64, model 100x64)'; '' if none."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {'x'.join(map(str, state[k].shape))}, model {'x'.join(map(str, own[k].shape))}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]

    def part(items: list[str], one: str, many: str) -> str:
        shown = ", ".join(items[:2]) + (", ..." if len(items) > 2 else "")
        return f"{len(items)} {one if len(items) == 1 else many} ({shown})" if items else ""

    parts = [
        part(missing, "missing key", "missing keys"),
        part(unexpected, "unexpected key", "unexpected keys"),
        part(shapes, "shape mismatch", "shape mismatches"),
    ]
    return ", ".join(p for p in parts if p)


def state_dict_of(payload: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict a file's content holds: a gpd student file's, a plain one, or under
    ``state_dict`` / ``model`` (timm and torchvision training checkpoints); None if none."""
    return _state_dict_of(payload)


def _state_dict_of(payload: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(payload, dict):
        return None
    if payload.get("format") == STUDENT_FORMAT:
        return payload["state_dict"]
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    for key in ("state_dict", "model"):
        inner = payload.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return None
