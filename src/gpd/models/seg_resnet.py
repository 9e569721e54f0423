"""Small segmentation networks for the CPU demo: a CIFAR-style ResNet encoder, a U-Net-style decoder.

The encoder is :mod:`gpd.models.cifar_resnet`'s (a 3x3 stride-1 stem, three BasicBlock stages at
strides 1, 2 and 4), so a student and its teacher of the classification zoo have segmentation
twins of the same depth and width. The decoder goes back up a stage at a time: a 2x2 stride-2
transposed conv, a concatenation with the encoder's features at that scale (the skip), one 3x3
conv-BN-ReLU; a 1x1 conv then gives per-pixel logits ``(N, num_classes, H, W)`` at the input size.

Inputs whose height and width are not multiples of 4 are resized at the skips (bilinear), so any
size works; the demo's 64x64 canvases need none. Every layer is one the expansion engine has a
rule for (Conv2d, ConvTranspose2d, BatchNorm2d, ReLU), and the skip is a plain ``torch.cat``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpd.models.cifar_resnet import CifarResNet, kaiming_init_
from gpd.models.registry import register_model


class UpBlock(nn.Module):
    """Up-sample ``deep`` twice with a transposed conv, concatenate ``skip``, fuse with a 3x3 conv-BN-ReLU."""

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(deep_channels, out_channels, 2, stride=2, bias=False)
        self.conv = nn.Conv2d(out_channels + skip_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, deep: Tensor, skip: Tensor) -> Tensor:
        up = self.up(deep)
        if up.shape[-2:] != skip.shape[-2:]:  # an odd size lost a row or column on the way down
            up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.relu(self.bn(self.conv(torch.cat([up, skip], 1))))


class SegResNet(nn.Module):
    """A CIFAR ResNet encoder (``conv1`` ... ``layer3``), decoder ``up3`` and ``up2``, a 1x1 ``classifier``."""

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")
    conv1: nn.Conv2d  # the encoder's modules, registered by CifarResNet._add_encoder
    bn1: nn.BatchNorm2d
    relu: nn.ReLU
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 11,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        _, w1, w2, w3 = widths
        CifarResNet._add_encoder(self, depth, widths, in_chans)  # type: ignore[arg-type]  # the same modules, in order
        self.up3 = UpBlock(w3, w2, w2)
        self.up2 = UpBlock(w2, w1, w1)
        self.classifier = nn.Conv2d(w1, num_classes, 1)
        kaiming_init_(self)

    @property
    def stages(self) -> list[nn.Module]:
        """The encoder's stage modules in order, for feature hooks of feature-based KD losses."""
        return [getattr(self, name) for name in self.stage_names]

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.layer1(self.relu(self.bn1(self.conv1(x))))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return self.classifier(self.up2(self.up3(f3, f2), f1))


_NARROW = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(num_classes: int, in_chans: int = 3) -> nn.Module:
        return SegResNet(depth, widths, num_classes=num_classes, in_chans=in_chans)

    factory.__qualname__ = factory.__name__ = name
    factory.__doc__ = f"Segmentation {name}: CIFAR ResNet depth {depth}, stage widths {widths[1:]}, U-Net decoder."
    register_model(name)(factory)


_register("seg_resnet8", 8, _NARROW)
_register("seg_resnet20", 20, _NARROW)
_register("seg_resnet8x4", 8, _X4)
