"""Helpers shared by the expansion, sharing and export tests."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gpd.testing import calibrate_batchnorm, randomize_batchnorm  # noqa: F401  (re-exported for the tests)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (computed in float64; b is the reference)."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


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
