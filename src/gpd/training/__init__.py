"""The training engine behind ``gpd train``."""

from gpd.training.launch import dry_run, launch, resume_config
from gpd.training.policy import DRY_RUN, FULL_RUN, RunPolicy
from gpd.training.run_dir import prepare_run_dir
from gpd.training.trainer import Trainer, train

__all__ = [
    "DRY_RUN",
    "FULL_RUN",
    "RunPolicy",
    "Trainer",
    "dry_run",
    "launch",
    "prepare_run_dir",
    "resume_config",
    "train",
]
