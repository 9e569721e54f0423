"""Build a run's models for its data: class count, channels, image size, pretrained weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gpd.config import Config
from gpd.data import DataBundle
from gpd.errors import ConfigError, ModelError
from gpd.models import create_model, transformers_hub
from gpd.models.registry import PRETRAINED_UNAVAILABLE, sized_kwargs
from gpd.training.hf_data import check_task


def create_for_data(
    name: str, data: DataBundle, kwargs: dict[str, Any], *, pretrained: bool = False, role: str, dry_run: bool = False,
    trust_remote_code: bool = False, log: Callable[[str], None] = print,
) -> nn.Module:  # fmt: skip
    """``create_model`` for ``data``'s classes, channels and image size.

    timm models built for one input size get ``img_size`` (see
    :func:`~gpd.models.registry.sized_kwargs`), so a DeiT runs on the dry run's small
    images and on any ``data.image_size``. ``pretrained``: torchvision/timm weights; offline
    that is a one-line error naming ``{role}.checkpoint``; a dry run never fetches them
    and says that random weights stand in. An ``hf:`` model loads its directory's weights (``log``
    gets the one line of what was loaded) and must read what the data hold, images or text.
    """
    key = "model.student" if role == "student" else f"{role}.model"
    task = None
    if transformers_hub.is_hf_name(name):
        task = transformers_hub.read_config(name, trust_remote_code)[1]
        kwargs = {**kwargs, "trust_remote_code": True} if trust_remote_code else kwargs
    check_task(name, task, data, key)
    if pretrained and dry_run:
        print(f"dry run: {role}.pretrained weights are not fetched in a dry run -> a random {name} stands in")
        pretrained = False
    try:
        model = create_model(
            name, num_classes=data.num_classes, in_chans=data.in_chans, pretrained=pretrained,
            **sized_kwargs(name, kwargs, data.input_size),
        )  # fmt: skip
    except ModelError as err:
        if pretrained and PRETRAINED_UNAVAILABLE in str(err):
            raise ConfigError(
                f"{role}.pretrained: {err}; give the weights as {role}.checkpoint=FILE with {role}.pretrained=false"
            ) from None
        raise
    report = transformers_hub.load_report(model)
    if report is not None:
        log(f"{key}: {report}")
    return model


def build_student(
    cfg: Config, data: DataBundle, dry_run: bool = False, log: Callable[[str], None] = print
) -> nn.Module:
    """The run's student, from ``model.student`` (pretrained weights if ``student.pretrained``)."""
    return create_for_data(
        cfg.model.student, data, cfg.model.kwargs, pretrained=cfg.student.pretrained, role="student", dry_run=dry_run,
        trust_remote_code=cfg.model.trust_remote_code, log=log,
    )  # fmt: skip
