"""Helpers shared by the expansion, sharing and export tests."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (computed in float64; b is the reference)."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def _uniform(shape: Iterable[int], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator) * (high - low) + low


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, example: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to the batch statistics of ``example``.

    Keeps activations at a sensible scale in eval mode (a freshly initialised deep net
    with identity statistics can make its features vanish or blow up, which would let
    a relative-error check pass trivially).
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the stats to its own
    model.train()
    try:
        model(example)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.num_batches_tracked.zero_()
        model.train(was_training)


@torch.no_grad()
def randomize_batchnorm(
    model: nn.Module, generator: torch.Generator, example: torch.Tensor | None = None
) -> nn.Module:
    """Give every BatchNorm random affine parameters and random running statistics.

    ``running_mean`` and ``running_var`` (positive) are drawn at random; with
    ``example`` they are first calibrated on it and then perturbed randomly, so that
    eval-mode activations keep a sensible scale. ``weight`` ~ U(0.5, 1.5),
    ``bias`` ~ N(0, 0.2^2). Returns ``model``.
    """
    if example is not None:
        calibrate_batchnorm(model, example)
    for m in model.modules():
        if not isinstance(m, _BatchNorm):
            continue
        c = m.num_features
        if m.affine:
            m.weight.copy_(_uniform((c,), 0.5, 1.5, generator))
            m.bias.copy_(torch.randn(c, generator=generator) * 0.2)
        if m.track_running_stats and m.running_mean is not None:
            if example is None:
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                m.running_var.copy_(_uniform((c,), 0.5, 2.0, generator))
            else:
                std = m.running_var.clamp_min(1e-6).sqrt()
                m.running_mean.add_(torch.randn(c, generator=generator) * 0.1 * std)
                m.running_var.mul_(_uniform((c,), 0.7, 1.4, generator))
    return model


def assert_nontrivial(output: torch.Tensor) -> None:
    """The outputs of different samples differ: the model does not output a constant."""
    out = output.detach().double()
    spread = (out - out.mean(0, keepdim=True)).abs().max().item()
    assert spread > 1e-3 * out.abs().max().item(), "model output does not depend on the input"


def bundled_model_names() -> list[str]:
    """Names from ``gpd.models.list_models()``, or [] if the zoo is not there yet."""
    try:
        models = importlib.import_module("gpd.models")
    except ImportError:
        return []
    list_models = getattr(models, "list_models", None)
    return sorted(list_models()) if callable(list_models) else []


def bundled_params(names: list[str] | None = None) -> list[Any]:
    """pytest params over the bundled models; one skipped param when there are none."""
    names = bundled_model_names() if names is None else names
    if not names:
        return [pytest.param(None, marks=pytest.mark.skip(reason="gpd.models has no list_models() yet"))]
    return names


def create_bundled(name: str, in_chans: int = 3, num_classes: int = 10) -> nn.Module:
    """A bundled model for 32 x 32 inputs (MobileNets with ``small_input=True`` if accepted)."""
    models = pytest.importorskip("gpd.models")
    if not hasattr(models, "create_model"):
        pytest.skip("gpd.models has no create_model() yet")
    if "mobilenet" in name:
        try:
            return models.create_model(name, num_classes=num_classes, in_chans=in_chans, small_input=True)
        except Exception:  # the factory does not take small_input
            pass
    return models.create_model(name, num_classes=num_classes, in_chans=in_chans)




def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
