"""gpd: Gap Preserving Distillation for PyTorch.

``gpd.expand(student, ratio)`` builds the dynamic teacher D (a wider copy of the
student computing the same function) with the student as a channel slice of D;
``GPDModel.export_student()`` extracts a plain student after training.

The public names are loaded on first use (PEP 562): ``import gpd.channel_maps`` or
``import gpd.errors`` runs this file, and would otherwise load the whole engine. A new
public name is one entry of :data:`_LAZY` (and of the ``TYPE_CHECKING`` imports, for
type checkers); submodules (``gpd.expansion``, ...) load on first attribute access too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names as _LAZY, for type checkers (``X as X``: re-exported)
    from gpd.distill import Distiller as Distiller
    from gpd.distill import Task as Task
    from gpd.distill import register_kd_method as register_kd_method
    from gpd.distill import register_task as register_task
    from gpd.errors import ArgumentError as ArgumentError
    from gpd.errors import CheckpointError as CheckpointError
    from gpd.errors import ConfigError as ConfigError
    from gpd.errors import DataError as DataError
    from gpd.errors import ExpansionError as ExpansionError
    from gpd.errors import GPDError as GPDError
    from gpd.errors import ModelError as ModelError
    from gpd.expansion import expand as expand
    from gpd.expansion import register_channel_tensors as register_channel_tensors
    from gpd.expansion import register_expansion_rule as register_expansion_rule
    from gpd.expansion.model import GPDModel as GPDModel
    from gpd.io.student import load_student as load_student

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "ArgumentError": "gpd.errors",
    "CheckpointError": "gpd.errors",
    "ConfigError": "gpd.errors",
    "DataError": "gpd.errors",
    "Distiller": "gpd.distill",
    "ExpansionError": "gpd.errors",
    "GPDError": "gpd.errors",
    "GPDModel": "gpd.expansion.model",
    "ModelError": "gpd.errors",
    "Task": "gpd.distill",
    "expand": "gpd.expansion",
    "load_student": "gpd.io.student",
    "register_channel_tensors": "gpd.expansion",
    "register_expansion_rule": "gpd.expansion",
    "register_kd_method": "gpd.distill",
    "register_task": "gpd.distill",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first access (then cached in this module);
    else a submodule of gpd (``gpd.expansion`` after a bare ``import gpd``)."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
