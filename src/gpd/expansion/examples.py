"""The inputs the expansion runs the student and D on: the user's example, or a random one of the
model's input size, and copies of it with extra samples (to measure layouts, to verify).

An example is a :class:`~gpd.inputs.ModelInput`: a tensor passed positionally, or a mapping
(``input_ids``, ``attention_mask``, ``pixel_values``, ...) passed as keyword arguments."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gpd.errors import ExpansionError
from gpd.inputs import ModelInput, model_input


def infer_input_size(model: nn.Module) -> tuple[int, ...]:
    """A plausible per-sample input size (C, H, W).

    Channels come from the first convolution; the spatial size from how the model was
    built (``img_size`` in gpd's model spec, a timm patch embedding), else timm's
    default config, else 32 x 32 (enough for any CNN with global pooling).
    """
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    cfgs = (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None))
    cfg = next((c for c in cfgs if isinstance(c, dict)), {})
    cfg_size = tuple(cfg.get("input_size") or ())
    channels = first_conv.in_channels if first_conv is not None else (cfg_size[0] if cfg_size else None)
    if channels is None:
        raise ExpansionError(
            f"cannot tell the input size of {type(model).__name__}; pass example_input= or input_size=(C, H, W)"
        )
    spec_size = (getattr(model, "gpd_spec", None) or {}).get("kwargs", {}).get("img_size")
    patch_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    for size in (spec_size, patch_size, cfg_size[1:] if cfg_size else None):
        if size:
            height, width = (size, size) if isinstance(size, int) else tuple(size)
            return (channels, int(height), int(width))
    return (channels, 32, 32)


def example_of(model: nn.Module, example_input: Any, input_size: tuple[int, ...] | None, batch: int = 2) -> ModelInput:
    """``example_input`` as arguments (a mapping as keyword arguments, a tuple as positional ones),
    else a seeded random batch of ``input_size`` (or the inferred size)."""
    if example_input is not None:
        return model_input(example_input)
    size = tuple(input_size) if input_size is not None else infer_input_size(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return ModelInput((torch.randn((batch, *size), generator=generator).to(device),), {})


MEASURE_EXTRA, CHECK_EXTRA = 6, 2  # random samples added to the example: to measure layouts, to verify


def with_extra_samples(example: ModelInput, extra: int, seed: int) -> ModelInput:
    """``example`` with ``extra`` random samples of the same per-sample shape, mean and std appended.

    Two samples rarely tell every channel apart: a ReLU leaves some all zero (dead on
    the example, alive on other inputs), and equal channels cannot be told copy from
    copy. Layouts are measured on more samples, and verification adds samples the
    measurement never saw, so a wrong guess among equal channels is refused, not kept.
    Only an example made of float tensors of one batch size is extended (positional or
    keyword: ``pixel_values=``). An example with integer tensors (token ids, attention
    masks, token types) is used as it is: random ids would be no text, and random masks
    could hide every token of a row. Give such a model an example of several distinct
    samples, some of them padded, and their tokens tell the channels apart.
    """
    tensors = example.tensors()
    values = list(example.args) + list(example.kwargs.values())
    if not tensors or len(tensors) != len(values) or any(not t.is_floating_point() or t.ndim < 1 for t in tensors):
        return example
    if len({t.shape[0] for t in tensors}) != 1:
        return example
    generator = torch.Generator().manual_seed(seed)

    def extend(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn((extra, *t.shape[1:]), generator=generator, dtype=t.dtype).to(t.device)
        std = t.std() if t.numel() > 1 else torch.ones((), dtype=t.dtype)
        return torch.cat([t, noise * std + t.mean()], 0)

    return example.map_tensors(extend)
