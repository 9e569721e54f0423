"""Helpers shared by the tests: numerical comparisons, bundled models, the CLI's paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gpd.data import locate
from gpd.models import create_model, list_models
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
    """Every model of gpd's zoo (``gpd.models.list_models()``), sorted."""
    names = sorted(list_models())
    assert names, "gpd.models.list_models() is empty"
    return names


def create_bundled(name: str, in_chans: int = 3, num_classes: int = 10) -> nn.Module:
    """A bundled model for 28-32 px inputs (MobileNets with a stride-1 stem)."""
    extra = {"small_input": True} if "mobilenet" in name else {}
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **extra)


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


needs_fashion_mnist = pytest.mark.skipif(
    not (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (make test installs it)",
)
GPD = str(Path(sys.executable).with_name("gpd"))  # the CLI of this environment
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

FASHION_MNIST_PRESENT = (locate.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_PRESENT, reason="Fashion-MNIST is not installed (make test installs it)"
)
QUICK = ["data.train_subset=2048", "train.epochs=1", "train.batch_size=32", "train.eval_batch_size=1000"]  # a quick run
