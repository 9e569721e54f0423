"""The former home of :class:`~gpd.expansion.model.GPDModel` (what ``gpd.expand`` returns), kept
so that ``from gpd.gpd_model import GPDModel`` still works; new code imports from gpd.expansion.model."""

from gpd.expansion.model import ExpansionReport, GPDModel, PairRoles, Role

__all__ = ["ExpansionReport", "GPDModel", "PairRoles", "Role"]
