"""MobileNetV1 (Howard et al. 2017), the ImageNet student of the DKD/ReviewKD literature.

A 3x3 stride-2 stem with 32 channels, then 13 depthwise-separable blocks, each an
``nn.Sequential`` of depthwise conv-BN-ReLU and pointwise conv-BN-ReLU. The blocks are
grouped by output resolution into layer1..layer5 so stage features are reachable as
submodules. ``small_input=True`` makes the stem stride 1 for 28-32 px images.

Layers are restricted to Conv2d, BatchNorm2d, ReLU, AdaptiveAvgPool2d, Flatten, Linear
and Sequential because the expansion engine has a rule per layer class.
"""

from __future__ import annotations

from torch import Tensor, nn

from gpd.models.cifar_resnet import kaiming_init_
from gpd.models.registry import register_model

# (output channels, stride) of the 13 depthwise-separable blocks, grouped into stages
# that each end before the next downsampling.
_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


def _scaled(channels: int, width_mult: float) -> int:
    """Scale a width and round to a multiple of 8 (at least 8) so the layers stay hardware friendly."""
    return max(8, int(channels * width_mult + 4) // 8 * 8)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    ]


def depthwise_separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (groups=in_ch) conv-BN-ReLU followed by pointwise 1x1 conv-BN-ReLU."""
    return nn.Sequential(
        *_conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch),
        *_conv_bn_relu(in_ch, out_ch, 1, 1),
    )


class MobileNetV1(nn.Module):
    """Stem, five stages of depthwise-separable blocks, global pool, ``fc``."""

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4", "layer5")

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        in_ch = _scaled(32, width_mult)
        self.stem = nn.Sequential(*_conv_bn_relu(in_chans, in_ch, 3, 1 if small_input else 2))
        for stage_name, blocks in zip(self.stage_names, _STAGES):
            layers = []
            for channels, stride in blocks:
                out_ch = _scaled(channels, width_mult)
                layers.append(depthwise_separable(in_ch, out_ch, stride))
                in_ch = out_ch
            setattr(self, stage_name, nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_ch, num_classes)
        kaiming_init_(self)

    @property
    def stages(self) -> list[nn.Module]:
        """The stage modules in order, for feature hooks of feature-based KD losses."""
        return [getattr(self, name) for name in self.stage_names]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.flatten(self.avgpool(x)))


@register_model("mobilenetv1")
def mobilenetv1(num_classes: int, in_chans: int = 3, width_mult: float = 1.0, small_input: bool = False) -> nn.Module:
    """MobileNetV1; width_mult scales every layer, small_input makes the stem stride 1."""
    return MobileNetV1(num_classes, in_chans, width_mult=width_mult, small_input=small_input)
