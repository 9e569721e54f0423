"""Wide ResNets (Zagoruyko & Komodakis 2016) as used by the KD literature on CIFAR.

Pre-activation blocks (BN-ReLU-conv), depth 6n+4, stage widths 16k/32k/64k after a
16-channel stem. As in the reference implementation, a block that changes the width
takes its 1x1 conv shortcut from the pre-activated input.

Layers are restricted to Conv2d, BatchNorm2d, ReLU, Dropout, AdaptiveAvgPool2d,
Flatten, Linear and Sequential, and the residual add is a plain ``+``, because the
expansion engine has a rule per layer class.
"""

from __future__ import annotations

from torch import Tensor, nn

from gpd.models.cifar_resnet import kaiming_init_
from gpd.models.registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus identity or 1x1 conv ``shortcut``."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    """Stem conv, three wide stages (layer1..layer3), final BN-ReLU, global pool, ``fc``."""

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_stage(widths[0], widths[1], n, 1, drop_rate)
        self.layer2 = self._make_stage(widths[1], widths[2], n, 2, drop_rate)
        self.layer3 = self._make_stage(widths[2], widths[3], n, 2, drop_rate)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)
        kaiming_init_(self)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int, drop_rate: float) -> nn.Sequential:
        layers = [WideBasicBlock(in_planes, planes, stride, drop_rate)]
        layers += [WideBasicBlock(planes, planes, 1, drop_rate) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    @property
    def stages(self) -> list[nn.Module]:
        """The stage modules in order, for feature hooks of feature-based KD losses."""
        return [getattr(self, name) for name in self.stage_names]

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.avgpool(x)))


def _register(depth: int, widen_factor: int) -> None:
    name = f"wrn_{depth}_{widen_factor}"

    def factory(num_classes: int, in_chans: int = 3, drop_rate: float = 0.0) -> nn.Module:
        return WideResNet(depth, widen_factor, num_classes, in_chans, drop_rate=drop_rate)

    factory.__qualname__ = factory.__name__ = name
    factory.__doc__ = f"WRN-{depth}-{widen_factor}; drop_rate is the dropout inside each block."
    register_model(name)(factory)


for _depth, _k in ((16, 1), (16, 2), (16, 4), (40, 1), (40, 2), (40, 4), (28, 4), (28, 10)):
    _register(_depth, _k)
