"""Save and load an exported student without the training config.

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


def _load_file(path: str | Path, missing: str, unreadable: str) -> tuple[Path, Any]:
    """``torch.load`` (weights only) of a file or of a run directory's student.pt, with one-line errors.

    ``missing`` and ``unreadable`` describe the file in the messages ("{path}" is filled in).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "student.pt"
    if not path.is_file():
        raise CheckpointError(missing.format(path=path))
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{unreadable.format(path=path)}: {first_line(err)[:200]}") from None


def read_student_file(path: str | Path) -> dict[str, Any]:
    """Read and check a student.pt file (or the one inside a run directory)."""
    path, payload = _load_file(path, "no exported student at {path}", "cannot read {path} as a gpd student file")
    if not isinstance(payload, dict) or payload.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{path} is not a gpd student file (expected format {STUDENT_FORMAT})")
    return payload


def student_from_payload(payload: dict[str, Any], path: str | Path) -> nn.Module:
    """Rebuild the student held by a payload read with :func:`read_student_file`, in eval mode."""
    try:
        model = create_model_from_spec(payload["spec"])
    except GPDError as err:
        raise CheckpointError(f"cannot rebuild the student saved in {path}: {err}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match the architecture {payload['spec'].get('name')}: {first_line(err)}") from None
    return model.eval()


def load_student(path: str | Path) -> nn.Module:
    """Rebuild an exported student from ``student.pt`` (or a run directory), in eval mode."""
    return student_from_payload(read_student_file(path), path)


def load_weights(model: nn.Module, path: str | Path, what: str = "model") -> nn.Module:
    """Load a checkpoint into ``model`` strictly: a run directory, a student.pt or a state_dict file."""
    path, payload = _load_file(path, f"{what} checkpoint {{path}} does not exist", f"cannot read {what} checkpoint {{path}}")
    state = _state_dict_of(payload)
    if state is None:
        raise CheckpointError(f"{what} checkpoint {path} holds no state_dict (a gpd student.pt, a run directory or a state_dict file)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{what} checkpoint {path} does not fit {type(model).__name__}: {first_line(err)}"
        ) from None
    return model


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
