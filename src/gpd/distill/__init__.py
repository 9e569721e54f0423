"""Training objectives that return their loss terms as a dict."""

from gpd.distill.distiller import Distiller

__all__ = ["Distiller"]
