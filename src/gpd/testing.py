"""Helpers to check an expansion on a model of your own, as gpd's tests do.

A freshly initialised network is a weak test subject: identity BatchNorm statistics
and tiny weights can make its output nearly constant, so a relative-error check
passes trivially. These helpers give a model random, well-scaled statistics first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gpd.inputs import call_model


def _uniform(shape: Iterable[int], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator) * (high - low) + low


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, example: Any) -> None:
    """Set every BatchNorm's running statistics to the batch statistics of ``example``.

    Keeps activations at a sensible scale in eval mode (a freshly initialised deep net
    with identity statistics can make its features vanish or blow up, which would let
    a relative-error check pass trivially). ``example`` is a batch: a tensor, or a mapping
    passed as keyword arguments.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the stats to its own
    model.train()
    try:
        call_model(model, example)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            if m.num_batches_tracked is not None:  # a norm that tracks running stats has it
                m.num_batches_tracked.zero_()
        model.train(was_training)


@torch.no_grad()
def randomize_batchnorm(
    model: nn.Module, generator: torch.Generator, example: Any = None, *, affine_first: bool = False
) -> nn.Module:
    """Give every BatchNorm random affine parameters and random running statistics.

    ``running_mean`` and ``running_var`` (positive) are drawn at random; with
    ``example`` they are first calibrated on it and then perturbed randomly, so that
    eval-mode activations keep a sensible scale. ``weight`` ~ U(0.5, 1.5),
    ``bias`` ~ N(0, 0.2^2). ``affine_first=True`` draws the affine parameters before the
    calibration, so the statistics are those of the final weights: a net whose activations
    nearly vanish at initialisation (transformers' MobileViT, variance 4e-8 after a few
    layers) would otherwise amplify the new biases by 1/sqrt(eps) at every norm. Returns ``model``.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if affine_first:
        for m in norms:
            _randomize_affine(m, generator)
    if example is not None:
        calibrate_batchnorm(model, example)
    for m in norms:
        c = m.num_features
        if not affine_first:
            _randomize_affine(m, generator)
        if m.track_running_stats and m.running_mean is not None and m.running_var is not None:
            if example is None:
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                m.running_var.copy_(_uniform((c,), 0.5, 2.0, generator))
            else:
                std = m.running_var.clamp_min(1e-6).sqrt()
                m.running_mean.add_(torch.randn(c, generator=generator) * 0.1 * std)
                m.running_var.mul_(_uniform((c,), 0.7, 1.4, generator))
    return model


def _randomize_affine(norm: _BatchNorm, generator: torch.Generator) -> None:
    if norm.affine:
        c = norm.num_features
        norm.weight.copy_(_uniform((c,), 0.5, 1.5, generator))
        norm.bias.copy_(torch.randn(c, generator=generator) * 0.2)


LAYER_SCALE_MAX = 1e-4  # a per-channel vector initialised below this, and nowhere zero, is a layer scale


@torch.no_grad()
def perturbed_for_verification(
    model: nn.Module, input_size: tuple[int, ...] | None = None, seed: int = 0, *, example: Any = None
) -> nn.Module:
    """``model`` with every parameter perturbed by N(0, 0.02^2) and random BatchNorm statistics, in eval mode.

    Layer scales (per-channel vectors initialised to 1e-6 or 1e-5) are drawn from U(0.5, 1.5)
    first: at 1e-6, or at 0.02 after the perturbation, a residual branch adds too little for
    a wrong expansion of it to show above the tolerance. BatchNorm statistics are calibrated
    on ``example`` (a batch, a mapping included; the affine parameters are drawn first, see
    :func:`randomize_batchnorm`) or else on random inputs of ``input_size``.
    """
    if example is None and input_size is None:
        raise ValueError("perturbed_for_verification needs input_size or example")
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if (
            param.ndim == 1
            and param.numel() > 1
            and bool((param != 0).all())
            and float(param.abs().max()) <= LAYER_SCALE_MAX
        ):
            param.copy_(_uniform(param.shape, 0.5, 1.5, generator))
        param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    if example is None:
        example = torch.randn(8, *input_size, generator=generator)  # type: ignore[misc]
        randomize_batchnorm(model, generator, example=example)
    else:
        randomize_batchnorm(model, generator, example=example, affine_first=True)
    return model.eval()


@torch.no_grad()
def unit_scale_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with weights of unit scale (each matrix N(0, 1/fan_in), embeddings 3x that,
    norm weights 1 + N(0, 0.3^2), other vectors N(0, 0.3^2)), so that attention is far from uniform.

    transformers initialise with std 0.02: attention is then nearly uniform and a wrong head
    layout changes the output by less than any tolerance (ModernBERT's fused qkv read as
    ``[q k v q k v]`` did, 7e-5 relative). Returns ``model``.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        if param.ndim >= 2:
            param.copy_(noise / math.sqrt(param.shape[-1]) * (3.0 if "embed" in name else 1.0))
        elif "norm" in name.lower() and name.endswith("weight"):
            param.copy_(1 + 0.3 * noise)
        else:
            param.copy_(0.3 * noise)
    return model
