"""Training objectives that return their loss terms as a dict, and the KD methods they use."""

from gpd.distill.distiller import Distiller, DistillerOutput
from gpd.distill.kd_methods import KD_METHODS, DecoupledKD, HintonKD, NoKD, kd_method_class
from gpd.distill.method import KDMethod, StaticTargets
from gpd.distill.pair import DynamicPair, UnsharedPair
from gpd.distill.reviewkd import ReviewKD

__all__ = [
    "KD_METHODS",
    "DecoupledKD",
    "Distiller",
    "DistillerOutput",
    "DynamicPair",
    "HintonKD",
    "KDMethod",
    "NoKD",
    "ReviewKD",
    "StaticTargets",
    "UnsharedPair",
    "kd_method_class",
]
