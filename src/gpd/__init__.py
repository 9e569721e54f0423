"""gpd: Gap Preserving Distillation for PyTorch.

``gpd.expand(student, ratio)`` builds the dynamic teacher D (a wider copy of the
student computing the same function) with the student as a channel slice of D;
``GPDModel.export_student()`` extracts a plain student after training.
"""

from gpd.distill import Distiller, register_kd_method
from gpd.errors import ArgumentError, CheckpointError, ConfigError, DataError, ExpansionError, GPDError, ModelError
from gpd.expansion import expand, register_channel_tensors, register_expansion_rule
from gpd.gpd_model import GPDModel
from gpd.io.student import load_student

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Distiller",
    "ExpansionError",
    "GPDError",
    "GPDModel",
    "ModelError",
    "expand",
    "load_student",
    "register_channel_tensors",
    "register_expansion_rule",
    "register_kd_method",
]
