"""Training objectives that return their loss terms and the student's logits, and the KD methods they use."""

from gpd.distill.distiller import Distiller
from gpd.distill.kd_methods import DecoupledKD, HintonKD, NoKD
from gpd.distill.method import KDMethod, KDNetworks, KDOptions, RoleNetwork
from gpd.distill.output import DistillerOutput, DynamicPart, StaticTargets, logits_of, total_loss
from gpd.distill.pair import DynamicPair, UnsharedPair
from gpd.distill.registry import KD_METHODS, kd_method_class, register_kd_method
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
    "KDNetworks",
    "KDOptions",
    "NoKD",
    "ReviewKD",
    "RoleNetwork",
    "StaticTargets",
    "UnsharedPair",
    "kd_method_class",
    "logits_of",
    "register_kd_method",
    "total_loss",
]
