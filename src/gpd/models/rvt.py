"""Robust Vision Transformer (RVT-Ti, RVT-S), written from the description in
Mao et al., "Towards Robust Vision Transformer", CVPR 2022 (the paper's students).

RVT is a DeiT-like ViT redesigned for robustness. What this file implements:

* **Convolutional stem**: two 3x3 stride-2 convs, each followed by BatchNorm and ReLU
  (widths ``embed_dim // 4`` and ``embed_dim // 2``), then a ``patch_size // 4``
  square "patchify" conv (kernel = stride) to ``embed_dim`` channels: overall
  stride ``patch_size``.
* A learnable absolute **position embedding** ``pos_embed`` of shape ``(1, N, C)``
  added to the patch tokens (bilinearly resized per channel when the input size
  differs from ``img_size``).
* **No class token**; three **stages** of pre-norm transformer blocks. Between two
  stages the token grid is halved by a depthwise 3x3 stride-2 conv (the width stays
  ``embed_dim``).
* Each block: ``x + attn(norm1(x))`` with timm's ``Attention`` (head dimension 64,
  qkv bias), then ``x + mlp(norm2(x))`` where the MLP is a **convolutional FFN**:
  ``fc1 -> GELU -> depthwise 3x3 conv on the token grid -> GELU -> fc2``.
* **Global average pooling** of the tokens, a final LayerNorm, the linear ``head``.

Left out (training tricks of the paper): position-aware attention scaling and
patch-wise augmentation. See ``RVT_CONFIGS`` for the sizes and the notes there.

The layers are restricted to classes the expansion engine has rules for (Conv2d,
depthwise Conv2d, BatchNorm2d, LayerNorm over the channel axis, Linear, timm's
Attention, parameter-free activations/dropout/drop-path); tokens <-> grid reshapes are
plain tensor ops that do not mix channels, and ``pos_embed`` is declared as a channel
tensor (last axis) at the bottom of this file, so ``gpd.expand`` builds an exact
dynamic teacher for integer ratios.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpd.models.registry import register_model

HEAD_DIM = 64

# name -> (embed_dim, num_heads, blocks per stage, mlp_ratio)
# The paper states a fixed head dimension of 64 and a depth of 12; the split of the 12
# blocks over the three stages (2, 8, 2) is our choice (see docs in the module string).
RVT_CONFIGS: dict[str, tuple[int, int, tuple[int, ...], float]] = {
    "rvt_tiny": (192, 3, (2, 8, 2), 4.0),
    "rvt_small": (384, 6, (2, 8, 2), 4.0),
}


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _to_grid(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, N, C) tokens -> (B, C, H, W) grid."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


def _to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) grid -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """conv3x3/2-BN-ReLU, conv3x3/2-BN-ReLU, then a (p/4 x p/4, stride p/4) patchify conv."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        if patch_size < 4 or patch_size % 4:
            raise ValueError(f"RVT patch_size must be a positive multiple of 4, got {patch_size}")
        c1, c2 = max(embed_dim // 4, 8), max(embed_dim // 2, 8)
        self.patch_size = patch_size
        self.conv1 = nn.Conv2d(in_chans, c1, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        k = patch_size // 4
        self.proj = nn.Conv2d(c2, embed_dim, k, stride=k)

    def grid_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        k = self.patch_size // 4
        out = []
        for n in img_size:
            n = _conv_out(_conv_out(n, 3, 2, 1), 3, 2, 1)
            out.append(_conv_out(n, k, k, 0))
        return out[0], out[1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.proj(x)


class ConvMlp(nn.Module):
    """Convolutional FFN: fc1 -> GELU -> depthwise 3x3 on the token grid -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.act1(self.fc1(x))
        x = _to_tokens(self.dwconv(_to_grid(x, size)))
        x = self.drop1(self.act2(x))
        return self.drop2(self.fc2(x))


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, then the convolutional FFN."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        from timm.layers import DropPath  # timm is imported when an RVT is built, not with gpd
        from timm.layers.attention import Attention

        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x), size))


class Downsample(nn.Module):
    """Halves the token grid between stages: depthwise 3x3 stride-2 conv (width unchanged)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2, padding=1, groups=dim)

    def forward(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        grid = self.conv(_to_grid(x, size))
        return _to_tokens(grid), (grid.shape[2], grid.shape[3])


class Stage(nn.Module):
    """An optional ``downsample`` followed by ``blocks``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, downsample: bool,
                 drop: float, attn_drop: float, drop_path: list[float]) -> None:  # fmt: skip
        super().__init__()
        self.downsample = Downsample(dim) if downsample else None
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, drop, attn_drop, drop_path[i]) for i in range(depth)
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        if self.downsample is not None:
            x, size = self.downsample(x, size)
        for block in self.blocks:
            x = block(x, size)
        return x, size


class RVT(nn.Module):
    """RVT classifier: conv stem + position embedding, multi-stage blocks, GAP, LayerNorm, ``head``."""

    stage_names: tuple[str, ...] = ("stages.0", "stages.1", "stages.2")
    # pos_embed is added to the (B, N, C) tokens: tiled on its channel (last) axis in D (docs/method.md)
    gpd_channel_tensors: ClassVar[dict[str, int]] = {"pos_embed": -1}

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int | None = None,
        embed_dim: int = 192,
        num_heads: int = 3,
        depths: tuple[int, ...] = (2, 8, 2),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
        if patch_size is None:
            patch_size = 16 if img_size > 64 else 4
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if not depths or any(d < 0 for d in depths):
            raise ValueError(f"depths must be non-negative block counts, got {depths!r}")
        self.num_classes = num_classes
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.stage_names = tuple(f"stages.{i}" for i in range(len(depths)))

        self.patch_embed = ConvStem(in_chans, embed_dim, patch_size)
        self.grid_size = self.patch_embed.grid_size((img_size, img_size))
        if min(self.grid_size) < 1:
            raise ValueError(f"img_size {img_size} is too small for patch_size {patch_size}")
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist() if sum(depths) else []
        self.stages = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            self.stages.append(
                Stage(
                    embed_dim,
                    depth,
                    num_heads,
                    mlp_ratio,
                    downsample=i > 0,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[start : start + depth],
                )
            )
            start += depth
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        from timm.layers import trunc_normal_

        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _pos_embed(self, size: tuple[int, int]) -> Tensor:
        """The position embedding for a ``size`` token grid (resized per channel if needed)."""
        if tuple(size) == tuple(self.grid_size):
            return self.pos_embed
        grid = _to_grid(self.pos_embed, self.grid_size)
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        return _to_tokens(grid)

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens (B, N, C) after the last stage (before pooling)."""
        grid = self.patch_embed(x)
        size = (grid.shape[2], grid.shape[3])
        x = self.pos_drop(_to_tokens(grid) + self._pos_embed(size))
        for stage in self.stages:
            x, size = stage(x, size)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        x = self.norm(x.mean(dim=1))  # global average pooling of the tokens, then LayerNorm
        return self.head(self.head_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _register(name: str) -> None:
    embed_dim, num_heads, depths, mlp_ratio = RVT_CONFIGS[name]

    def factory(
        num_classes: int,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> nn.Module:
        return RVT(
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            num_heads=num_heads,
            depths=depths,
            mlp_ratio=mlp_ratio,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
        )

    factory.__qualname__ = factory.__name__ = name
    factory.__doc__ = (
        f"{name}: RVT with embed dim {embed_dim}, {num_heads} heads of {HEAD_DIM}, blocks per stage {depths}; "
        "patch_size defaults to 16 (4 when img_size <= 64)."
    )
    register_model(name)(factory)


for _name in RVT_CONFIGS:
    _register(_name)
