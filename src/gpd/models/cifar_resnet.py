"""CIFAR-style ResNets of the knowledge-distillation literature (CRD, DKD, ReviewKD).

Depth 6n+2 with BasicBlocks, a 3x3 stride-1 stem and no max pool, so 32 px inputs keep
their resolution until layer2. The "x4" variants (resnet8x4, resnet32x4) use stage
widths 64/128/256 after a 32-channel stem. Shortcuts that change shape are 1x1 conv +
BatchNorm (option B).

The layers are restricted to Conv2d, BatchNorm2d, ReLU, AdaptiveAvgPool2d, Flatten,
Linear and Sequential, and the residual add is a plain ``+``, because the expansion
engine that builds the dynamic teacher has a rule per layer class.
"""

from __future__ import annotations

from torch import Tensor, nn

from gpd.models.registry import register_model


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs and BN weight 1 / bias 0, as in the KD literature."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN (``downsample``) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """Stem conv-BN-ReLU, three BasicBlock stages (layer1..layer3), global pool, ``fc``."""

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        w3 = self._add_encoder(depth, widths, in_chans)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(w3, num_classes)
        kaiming_init_(self)

    def _add_encoder(self, depth: int, widths: tuple[int, int, int, int], in_chans: int) -> int:
        """Register the stem and the three stages (conv1, bn1, relu, layer1..layer3) on ``self``, in that
        order (the order decides the initialisation's random draws); the last stage's width. Shared
        with the segmentation models' encoder (gpd.models.seg_resnet)."""
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        stem, w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(in_chans, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.layer1 = CifarResNet._make_stage(stem, w1, n, stride=1)
        self.layer2 = CifarResNet._make_stage(w1, w2, n, stride=2)
        self.layer3 = CifarResNet._make_stage(w2, w3, n, stride=2)
        return w3

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    @property
    def stages(self) -> list[nn.Module]:
        """The stage modules in order, for feature hooks of feature-based KD losses."""
        return [getattr(self, name) for name in self.stage_names]

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.fc(self.flatten(self.avgpool(x)))


_NARROW = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(num_classes: int, in_chans: int = 3) -> nn.Module:
        return CifarResNet(depth, widths, num_classes=num_classes, in_chans=in_chans)

    factory.__qualname__ = factory.__name__ = name
    factory.__doc__ = f"CIFAR {name}: depth {depth}, stage widths {widths[1:]}."
    register_model(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, _NARROW)
_register("resnet8x4", 8, _X4)
_register("resnet32x4", 32, _X4)
