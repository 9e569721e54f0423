"""torchvision's segmentation models (FCN, DeepLabV3, LRASPP) by name, for the registry's ``tv:NAME``.

Their output is a dict: ``out`` (per-pixel logits at the input size) and, built with
``aux_loss=True``, ``aux`` (the auxiliary head's logits, FCN and DeepLabV3 only).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gpd.errors import ModelError

PRETRAINED_UNAVAILABLE = "pretrained weights are not available offline; pass a checkpoint instead"


def names() -> list[str]:
    """torchvision's segmentation model names (``fcn_resnet50``, ``lraspp_mobilenet_v3_large``, ...)."""
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm.segmentation))


def create(arch: str, num_classes: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``arch`` with a head of ``num_classes``; one-line :class:`ModelError` on bad arguments.

    ``pretrained`` loads the ImageNet backbone only (torchvision's segmentation weights are for
    the 21 VOC classes); without it nothing is downloaded, although torchvision's default
    ``weights_backbone`` for FCN and DeepLabV3 is a pretrained ResNet. ``kwargs`` may set
    ``aux_loss`` and ``weights_backbone``.
    """
    import torchvision.models as tvm

    options = {"weights_backbone": "DEFAULT" if pretrained else None, **kwargs}
    try:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **options)
    except (TypeError, ValueError, NotImplementedError) as err:  # LRASPP has no aux head: NotImplementedError
        raise ModelError(f"cannot build 'tv:{arch}': {_one_line(err)}") from err
    except Exception as err:  # download / cache failures: offline machine
        if not pretrained:
            raise
        raise ModelError(f"{PRETRAINED_UNAVAILABLE} (tv:{arch}: {_one_line(err)})") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
