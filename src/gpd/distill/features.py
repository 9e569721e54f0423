"""Multi-stage features taken with forward hooks, for feature-based KD (ReviewKD).

Models are never edited: the stage outputs are read by hooks registered for the length
of one forward pass (so copies and exports of a model never carry them). A stage that
returns tokens and their grid size, ``((B, N, C), (H, W))`` as RVT's stages do, gives the
(B, C, H, W) map of those tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gpd.errors import ConfigError


def feature_stage_names(model: nn.Module) -> list[str]:
    """The modules whose outputs are the model's stage features, shallow to deep.

    gpd's bundled models name them in ``stage_names``; timm models describe them in
    ``feature_info``; torchvision ResNets have ``layer1`` ... ``layer4``.
    """
    names = getattr(model, "stage_names", None)
    if names:
        return list(names)
    info = getattr(model, "feature_info", None)
    if info:
        modules = [entry["module"] for entry in info if isinstance(entry, dict) and entry.get("module")]
        modules = [m for m in modules if m in dict(model.named_modules())]
        if modules:
            return modules
    resnet_layers = [f"layer{i}" for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if len(resnet_layers) >= 2:
        return resnet_layers
    raise ConfigError(
        f"cannot tell the feature stages of {type(model).__name__} for ReviewKD; "
        "give the model a stage_names attribute listing its stage modules"
    )


def as_feature_map(output: object) -> object:
    """A stage's output as a feature map: a ``(tokens (B, H*W, C), (H, W))`` pair becomes (B, C, H, W)."""
    if isinstance(output, tuple) and len(output) == 2:
        tokens, size = output
        grid_size = isinstance(size, (tuple, list)) and len(size) == 2
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 3 and grid_size:
            height, width = (int(s) for s in size)
            if height * width == tokens.shape[1]:
                return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)
    return output


@contextmanager
def stage_features(model: nn.Module, names: list[str]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of ``names`` (in that order) during the forward passes inside the block."""
    features: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(lambda mod, args, out, name=name: features.__setitem__(name, as_feature_map(out)))
        for name in names
    ]
    ordered: list[torch.Tensor] = []
    try:
        yield ordered
    finally:
        for handle in handles:
            handle.remove()
        missing = [name for name in names if name not in features]
        if missing:
            raise ConfigError(f"stages {missing} of {type(model).__name__} did not run in the forward pass")
        ordered.extend(features[name] for name in names)
