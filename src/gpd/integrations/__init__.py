"""Integrations with other training frameworks (imported on demand: ``gpd.integrations.timm``)."""
