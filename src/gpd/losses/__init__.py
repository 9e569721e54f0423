"""Loss functions: each returns the batch-mean scalar."""

from gpd.losses.soft_targets import kd, sce

__all__ = ["kd", "sce"]
