"""Per-layer SGD steps of transposed convolutions, predicted by hand and measured (docs/method.md,
"Per-layer steps").

A transposed conv sums over its input channels as a conv does; only its weight's axes are
swapped ``(in, out / groups, *k)``, so D divides dim 0. In the paper's parameterisation (D's
activations h/r per copy) it is stored as the conv of the same role: W/r tiled where it reads
the image (a = 1/r), W/r blocks in the middle (a = 1), W tiled where it writes the logits
(a = r), b/r for the bias of an expanded output (a = 1/r), grouped and depthwise ones tiled and
wrapped (a = 1). In the interleaved layout D keeps a grouped one at the student's group count,
each group r times wider and reading all copies of its inputs: a middle weight and an expanded
bias. A tensor stored ``a`` times ours gets ``1/a**2`` times our SGD step; the student's view of
a tensor stored ``c`` times its own value (c = r on the divided weights) gets ``c**2`` times the
plain student's step. Under "plain" every factor is 1.

One SGD step in float64 on a per-pixel cross-entropy: the measured move of every student
parameter (student's loss alone) and of every D parameter (D's loss alone) must equal
``-lr * factor * grad``, the gradient taken on the unexpanded student or on a plain copy of D.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gpd
from helpers import dynamic_factor, rel_err, student_factor

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LR = 0.05
CLASSES = 5


class KindsDecoder(nn.Module):
    """Every role of a transposed conv: reads the image, middle, depthwise, grouped, writes the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.ConvTranspose2d(3, 8, 2, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.mid = nn.ConvTranspose2d(8, 8, 3, padding=2, dilation=2)
        self.dw = nn.ConvTranspose2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.head = nn.ConvTranspose2d(16, CLASSES, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.bn(torch.relu(self.stem(x)))  # biases before a nonlinearity, so that they get gradients
        h = torch.relu(self.dw(torch.relu(self.mid(skip))))
        h = torch.relu(self.grouped(F.max_pool2d(h, 2)))
        return self.head(torch.cat([h, skip], 1))


def kind_of(name: str, layout: str) -> str:
    """A tensor's kind, as docs/method.md's table names it."""
    layer, tensor = name.split(".")
    if layer == "bn":
        return "norm"
    if layer == "dw" or (layer == "grouped" and layout == "tiled"):
        return "grouped"
    if layer == "head":
        return "head" if tensor == "weight" else "head_bias"
    if tensor == "bias":
        return "expanded_bias"  # stem, mid, and the interleaved layout's wide groups
    return "stem" if layer == "stem" else "middle"


def make() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = KindsDecoder().double()
    with torch.no_grad():  # non-trivial values everywhere
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (2, 16, 16))
    return model, x, y


def expand(student: nn.Module, r: int, rule: str, layout: str, x: torch.Tensor) -> gpd.GPDModel:
    return gpd.expand(student, r, example_input=x, step_rule=rule, layout=layout).train()


def one_step(model: gpd.GPDModel, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(forward(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("layout", ["tiled", "interleaved"])
@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("r", [2, 3])
def test_student_step_per_kind(r: int, rule: str, layout: str) -> None:
    student, x, y = make()
    student.train()
    plain = copy.deepcopy(student)
    F.cross_entropy(plain(x), y).backward()
    model = expand(student, r, rule, layout, x)
    assert model.dynamic.grouped.groups == (2 * r if layout == "tiled" else 2)
    before = {n: p.detach().clone() for n, p in model.student_parameters().items()}
    one_step(model, model.forward_student, x, y)
    after = model.student_parameters()
    kinds = set()
    for name, param in plain.named_parameters():
        kind = kind_of(name, layout)
        kinds.add(kind)
        predicted = -LR * student_factor(kind, r, rule) * param.grad
        assert rel_err(after[name] - before[name], predicted) <= 1e-9, (name, kind)
    assert kinds == {"stem", "middle", "expanded_bias", "grouped", "head", "head_bias", "norm"}


@pytest.mark.parametrize("layout", ["tiled", "interleaved"])
@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("r", [2, 3])
def test_dynamic_teacher_step_per_kind(r: int, rule: str, layout: str) -> None:
    student, x, y = make()
    model = expand(student, r, rule, layout, x)
    plain_d = copy.deepcopy(model.dynamic)  # a plain wide network: deepcopy of the module carries no hooks
    F.cross_entropy(plain_d(x), y).backward()
    before = {n: p.detach().clone() for n, p in model.dynamic.named_parameters()}
    one_step(model, model.forward_dynamic, x, y)
    plain_grads = dict(plain_d.named_parameters())
    for name, param in model.dynamic.named_parameters():
        kind = kind_of(name, layout)
        predicted = -LR * dynamic_factor(kind, r, rule) * plain_grads[name].grad
        assert rel_err(param.detach() - before[name], predicted) <= 1e-9, (name, kind)


def test_paper_scales_are_the_conv_kinds() -> None:
    """``paper_scale`` a of each transposed conv tensor, as derived above (r = 2, tiled)."""
    student, x, _y = make()
    slices = expand(student, 2, "paper", "tiled", x).student.slices
    expected = {
        "stem.weight": 0.5, "stem.bias": 0.5, "mid.weight": 1.0, "mid.bias": 0.5, "dw.weight": 1.0, "dw.bias": 1.0,
        "grouped.weight": 1.0, "grouped.bias": 1.0, "head.weight": 2.0, "head.bias": 1.0,
    }  # fmt: skip
    assert {n: slices[n].paper_scale for n in expected} == expected
