"""scripts/bn_recalibrated_eval.py: recomputed BatchNorm statistics are the plain average over the data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bn_recalibrated_eval.py"


def test_recalibrate_gives_the_average_statistics_over_the_data() -> None:
    spec = importlib.util.spec_from_file_location("bn_recalibrated_eval", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(256, 1, 6, 6) * 3 + 1
    model(x[:2])  # materialise the lazy layer
    model[1].running_mean.fill_(100.0)  # stale statistics
    script.recalibrate(model, TensorDataset(x, torch.zeros(256, dtype=torch.long)), batch_size=64)
    features = model[0](x).detach()
    expected_mean = features.mean((0, 2, 3))
    batch_vars = torch.stack([features[i : i + 64].var((0, 2, 3), unbiased=True) for i in range(0, 256, 64)])
    assert torch.allclose(model[1].running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, batch_vars.mean(0), rtol=1e-4)
