"""Model zoo: bundled CIFAR/ImageNet students plus torchvision (tv:NAME) and timm (timm:NAME)."""

from __future__ import annotations

from gpd.models import cifar_resnet, mobilenet, rvt, seg_resnet, wrn  # noqa: F401  (imported to register)
from gpd.models.registry import check_model_name, create_model, create_model_from_spec, list_models, register_model

__all__ = ["check_model_name", "create_model", "create_model_from_spec", "list_models", "register_model"]
