"""Training objectives that return their loss terms as a dict."""

from gpd.distill.distiller import Distiller
from gpd.distill.pair import DynamicPair, UnsharedPair

__all__ = ["Distiller", "DynamicPair", "UnsharedPair"]
