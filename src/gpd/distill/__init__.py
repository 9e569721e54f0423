"""Training objectives that return their loss terms as a dict, and the KD methods they use."""

from gpd.distill.distiller import Distiller
from gpd.distill.kd_methods import KD_METHODS, DecoupledKD, HintonKD, NoKD, kd_method_class
from gpd.distill.method import KDMethod
from gpd.distill.output import DistillerOutput, DynamicPart, StaticTargets, logits_of, total_loss
from gpd.distill.pair import DynamicPair, UnsharedPair
from gpd.distill.reviewkd import ReviewKD

__all__ = [
    "KD_METHODS",
    "DecoupledKD",
    "Distiller",
    "DistillerOutput",
    "DynamicPair",
    "DynamicPart",
    "HintonKD",
    "KDMethod",
    "NoKD",
    "ReviewKD",
    "StaticTargets",
    "UnsharedPair",
    "kd_method_class",
    "logits_of",
    "total_loss",
]
