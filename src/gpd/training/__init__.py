"""The training engine behind ``gpd train``."""

from gpd.training.run_dir import prepare_run_dir
from gpd.training.trainer import Trainer, train

__all__ = ["Trainer", "prepare_run_dir", "train"]
