"""Loss functions: each returns the batch-mean scalar."""

from gpd.losses.dkd import dkd
from gpd.losses.reviewkd import ABF, ReviewKDHead, hcl, reviewkd_loss
from gpd.losses.soft_targets import kd, sce

__all__ = ["ABF", "ReviewKDHead", "dkd", "hcl", "kd", "reviewkd_loss", "sce"]
