"""Channels the example cannot tell apart, and in-place ops after the output layer.

A channel that is dead on the example batch (all zero after a ReLU) equals every other
dead channel there, so the measured layout alone cannot say which copy is which. The
model below makes such channels dead on the example but alive on a larger input; D must
still equal the student there, which only the right assignment achieves.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpd
from gpd.testing import perturbed_for_verification

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DEAD_H, DEAD_B = (0, 3), (0,)  # h's first channel and b's first channel: a tie at a segment boundary


class DeadCatNet(nn.Module):
    """A DenseNet-like concat [h, conv(h)] where some channels of both parts are dead on small inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.grow, self.bn1 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bn2, self.conv = nn.BatchNorm2d(12), nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        b = torch.relu(self.bn1(self.grow(h)))
        y = self.conv(torch.relu(self.bn2(torch.cat([h, b], 1))))
        return self.fc(y.mean((2, 3)))


def dead_cat_net() -> nn.Module:
    model = perturbed_for_verification(DeadCatNet(), (3, 8, 8)).double()
    with torch.no_grad():
        for bn, dead in ((model.bn0, DEAD_H), (model.bn1, DEAD_B)):
            bn.running_mean.fill_(0.0), bn.running_var.fill_(1.0), bn.weight.fill_(1.0)
            bn.bias[list(dead)] = -20.0  # dead unless the input is large
    return model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("ratio", [2, 3])
def test_channels_dead_on_the_example_are_assigned_by_layout(ratio: float) -> None:
    student = dead_cat_net()
    example = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    large = 200 * torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        h_small = torch.relu(student.bn0(student.stem(example)))
        h_large = torch.relu(student.bn0(student.stem(large)))
        b_large = torch.relu(student.bn1(student.grow(h_large)))
    assert all(float(h_small[:, c].abs().max()) == 0 for c in DEAD_H)  # tied on the example
    assert all(float(h_large[:, c].abs().max()) > 0 for c in DEAD_H) and float(b_large[:, 0].abs().max()) > 0
    gm = gpd.expand(student, ratio, example_input=example).eval()
    with torch.no_grad():
        expected = student(large)
        assert rel(gm.forward_dynamic(large), expected) < 1e-10
        assert rel(gm.forward_student(large), expected) < 1e-10
        fresh = DeadCatNet().double()
        fresh.load_state_dict(gm.export_student().state_dict(), strict=True)
        assert rel(fresh.eval()(large), expected) < 1e-10


def test_inplace_relu_after_the_last_conv_keeps_that_conv_the_output_layer() -> None:
    """SqueezeNet's head: conv -> ReLU(inplace) -> pool; the in-place op must not hide the conv."""
    student = perturbed_for_verification(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.ReLU(inplace=True),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        (3, 8, 8),
    )  # fmt: skip
    gm = gpd.expand(student, 2, input_size=(3, 8, 8)).eval()
    assert gm.report.roles.output_layers == {"2"} and gm.report.roles.input_layers == {"0"}
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel(gm.forward_dynamic(x), student(x)) < 1e-5
