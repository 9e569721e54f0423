"""Loss functions: each returns the batch-mean scalar (the per-pixel ones, the pixel mean)."""

from gpd.losses.cwd import CWD_LOSS_WEIGHT, CWD_TAU, channel_wise_kd
from gpd.losses.dkd import dkd
from gpd.losses.reviewkd import ABF, ReviewKDHead, hcl, reviewkd_loss
from gpd.losses.segmentation import IGNORE_INDEX, pixel_cross_entropy, pixel_dkd, pixel_kd, pixel_sce
from gpd.losses.soft_targets import kd, sce

__all__ = [
    "ABF",
    "CWD_LOSS_WEIGHT",
    "CWD_TAU",
    "IGNORE_INDEX",
    "ReviewKDHead",
    "channel_wise_kd",
    "dkd",
    "hcl",
    "kd",
    "pixel_cross_entropy",
    "pixel_dkd",
    "pixel_kd",
    "pixel_sce",
    "reviewkd_loss",
    "sce",
]
