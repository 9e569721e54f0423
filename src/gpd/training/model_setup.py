"""Build a run's models for its data: class count, channels, image size, pretrained weights."""

from __future__ import annotations

from typing import Any

from torch import nn

from gpd.config import Config
from gpd.data import DataBundle
from gpd.errors import ConfigError, ModelError
from gpd.models import create_model
from gpd.models.registry import PRETRAINED_UNAVAILABLE, sized_kwargs


def create_for_data(
    name: str, data: DataBundle, kwargs: dict[str, Any], *, pretrained: bool = False, role: str, dry_run: bool = False
) -> nn.Module:
    """``create_model`` for ``data``'s classes, channels and image size.

    timm models built for one input size get ``img_size`` (see
    :func:`~gpd.models.registry.sized_kwargs`), so a DeiT runs on the dry run's small
    images and on any ``data.image_size``. ``pretrained``: torchvision/timm weights; offline
    that is a one-line error naming ``{role}.checkpoint``; a dry run never fetches them
    and says that random weights stand in.
    """
    if pretrained and dry_run:
        print(f"dry run: {role}.pretrained weights are not fetched in a dry run -> a random {name} stands in")
        pretrained = False
    try:
        return create_model(
            name, num_classes=data.num_classes, in_chans=data.in_chans, pretrained=pretrained,
            **sized_kwargs(name, kwargs, data.input_size),
        )  # fmt: skip
    except ModelError as err:
        if pretrained and PRETRAINED_UNAVAILABLE in str(err):
            raise ConfigError(
                f"{role}.pretrained: {err}; give the weights as {role}.checkpoint=FILE with {role}.pretrained=false"
            ) from None
        raise


def build_student(cfg: Config, data: DataBundle, dry_run: bool = False) -> nn.Module:
    """The run's student, from ``model.student`` (pretrained weights if ``student.pretrained``)."""
    return create_for_data(
        cfg.model.student, data, cfg.model.kwargs, pretrained=cfg.student.pretrained, role="student", dry_run=dry_run
    )
