"""gpd: Gap Preserving Distillation for PyTorch."""
