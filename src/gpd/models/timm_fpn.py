"""Segmentation from any timm backbone: ``features_only=True`` plus a small FPN head (``timm-seg:NAME``).

The head is a light version of the semantic FPN (Kirillov et al., "Panoptic Feature Pyramid
Networks", CVPR 2019): a 1x1 lateral conv per feature level, a top-down path that up-samples the
coarser map (bilinear) and adds it to the next lateral, one 3x3 conv-BN-ReLU on the finest map, a
1x1 classifier, and a bilinear up-sampling to the input size. Its output is per-pixel logits
``(N, num_classes, H, W)``.

Every layer of the head is one the expansion engine has a rule for (Conv2d, BatchNorm2d, ReLU),
so the model expands wherever its backbone does; a backbone layer without a rule is refused by
:func:`gpd.expand` with an ``ExpansionError`` naming it.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gpd.errors import ModelError

PREFIX = "timm-seg:"
PRETRAINED_UNAVAILABLE = "pretrained weights are not available offline; pass a checkpoint instead"


class TimmFPNSegmenter(nn.Module):
    """A timm backbone built with ``features_only=True`` (``backbone``), FPN ``laterals``, ``fuse`` and ``classifier``.

    Args:
        backbone_name: a timm model name (``resnet18``, ``mobilenetv3_small_050``, ``convnext_atto``, ...).
        num_classes: the number of per-pixel classes.
        in_chans: input channels.
        fpn_channels: the width of the FPN.
        out_indices: the backbone's feature levels to use (timm's ``out_indices``); default: all of them.
        pretrained: load timm's pretrained backbone weights (needs them downloaded).
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        in_chans: int = 3,
        fpn_channels: int = 64,
        out_indices: list[int] | tuple[int, ...] | None = None,
        pretrained: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        extra = dict(backbone_kwargs or {})
        if out_indices is not None:
            extra["out_indices"] = tuple(out_indices)
        self.backbone = timm.create_model(
            backbone_name, features_only=True, pretrained=pretrained, in_chans=in_chans, **extra
        )
        feature_info: Any = self.backbone.feature_info  # timm's FeatureInfo
        channels = list(feature_info.channels())
        self.laterals = nn.ModuleList(nn.Conv2d(c, fpn_channels, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(fpn_channels),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(fpn_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        top = self.laterals[-1](features[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(top))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def check_name(arch: str) -> None:
    """Raise :class:`ModelError` if ``arch`` names no timm model."""
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f" (did you mean '{PREFIX}{close[0]}'?)" if close else ""
        raise ModelError(f"unknown timm backbone '{PREFIX}{arch}'{hint}")


def create(arch: str, num_classes: int, in_chans: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``timm-seg:ARCH``: a :class:`TimmFPNSegmenter`; one-line :class:`ModelError` on bad names or arguments."""
    check_name(arch)
    try:
        return TimmFPNSegmenter(arch, num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise ModelError(f"cannot build '{PREFIX}{arch}': {_one_line(err)}") from err
    except Exception as err:  # download / cache failures: offline machine
        if not pretrained:
            raise ModelError(f"cannot build '{PREFIX}{arch}': {_one_line(err)}") from err
        raise ModelError(f"{PRETRAINED_UNAVAILABLE} ({PREFIX}{arch}: {_one_line(err)})") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
