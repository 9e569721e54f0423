"""A user's branch kind is merged by every export: the shared pair (student and D), the unshared
pair, the baseline Distiller, the best-epoch weight selection and the EMA weights.

The toy kind "twin" turns each 3x3 convolution into :class:`TwinConv`, whose kernel is the sum
of two parallel kernels; its merge gives back a plain ``nn.Conv2d``. It is registered for one
test at a time (the rule with ``RULES.override``, the kind in a copy of the user's side of the
rule set), so it does not leak into other tests.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn

import gpd
from gpd.distill.pair import UnsharedPair
from gpd.expansion import RULES, ExpandedLayer, LayerContext
from gpd.expansion.torch_rules import expand_conv
from gpd.training.selection import WeightSelection, standalone_student
from helpers import rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = (1, 12, 12)


class TwinConv(nn.Conv2d):
    """A 3x3 convolution whose kernel is ``weight + weight2`` (two parallel branches)."""

    weight2: nn.Parameter

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, generator: torch.Generator) -> TwinConv:
        twin = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None)
        second = 0.1 * torch.randn(conv.weight.shape, generator=generator)
        with torch.no_grad():
            twin.weight.copy_(conv.weight - second)  # the same function as the convolution
            twin.weight2 = nn.Parameter(second)
            if conv.bias is not None:
                twin.bias.copy_(conv.bias)  # type: ignore[union-attr]
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight + self.weight2, self.bias)

    def to_conv(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, padding=1, bias=self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.weight + self.weight2)
            if self.bias is not None:
                conv.bias.copy_(self.bias)  # type: ignore[union-attr]
        return conv.train(self.training)


def _replaced(model: nn.Module, pick: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if pick(child):
                setattr(parent, name, make(child))
    return model


def add_twins(model: nn.Module, init: str) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    return _replaced(
        model,
        lambda m: type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.groups == 1,
        lambda m: TwinConv.from_conv(m, generator),  # type: ignore[arg-type]
    )


def merge_twins(model: nn.Module) -> nn.Module:
    return _replaced(model, lambda m: isinstance(m, TwinConv), lambda m: m.to_conv())  # type: ignore[operator]


def expand_twin(module: TwinConv, ctx: LayerContext) -> ExpandedLayer:
    """D's TwinConv: each kernel expanded as the built-in conv rule expands a kernel."""
    layer = expand_conv(module, ctx)
    second = nn.Conv2d(module.in_channels, module.out_channels, 3, padding=1, bias=False)
    second.weight = module.weight2
    wide = expand_conv(second, ctx)
    layer.module.weight2 = nn.Parameter(wide.module.weight.detach().clone())
    layer.params["weight2"] = wide.params["weight"]
    return layer


@pytest.fixture
def twin_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The branch kind "twin" and TwinConv's expansion rule, for this test only."""
    builtin, users = RULES._branch_kinds
    monkeypatch.setattr(RULES, "_branch_kinds", (builtin, dict(users)))  # restored after the test
    RULES.register_branch_kind("twin", add_twins, merge_twins)
    with RULES.override(TwinConv, expand_twin):
        yield


def student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, *SIZE, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def train(module: nn.Module, loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], steps: int = 3) -> None:
    """A few SGD steps, so the exports are of trained weights (and BatchNorm statistics)."""
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    module.train()
    for step in range(steps):
        x, y = batch(step)
        optimizer.zero_grad()
        loss_of(x, y).backward()
        optimizer.step()


def has_twins(module: nn.Module) -> bool:
    return any(isinstance(m, TwinConv) for m in module.modules())


def assert_exported(exported: nn.Module, expected: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """No toy block is left, and the export computes what the trained network's student does (eval mode)."""
    assert not has_twins(exported)
    assert any(type(m) is nn.Conv2d for m in exported.modules())
    x, _ = batch(99)
    with torch.no_grad():
        assert rel_err(exported.eval()(x), expected(x)) <= 1e-5


def test_the_shared_pair_merges_a_registered_kind_in_student_and_d(twin_kind: None) -> None:
    model = gpd.expand(student(), 2, input_size=SIZE, branches="twin")
    assert has_twins(model.dynamic) and has_twins(model.student.module)
    train(
        model, lambda x, y: F.cross_entropy(model.forward_student(x), y) + F.cross_entropy(model(x, role="dynamic"), y)
    )
    model.eval()
    assert_exported(model.export_student(), model.forward_student)
    assert_exported(model.export_dynamic(), model.forward_dynamic)


def test_the_unshared_pair_merges_a_registered_kind(twin_kind: None) -> None:
    distiller = gpd.Distiller(student(), input_size=SIZE, branches="twin", share_parameters=False, noise_std=0.0)
    pair = distiller.network
    assert isinstance(pair, UnsharedPair) and has_twins(pair.student)
    train(distiller, lambda x, y: distiller(x, y).loss)
    distiller.eval()
    assert_exported(pair.export_student(), pair.forward_student)
    assert_exported(distiller.export_student(), pair.forward_student)
    assert_exported(pair.export_dynamic(), pair.forward_dynamic)


def test_the_baseline_distiller_merges_a_registered_kind(twin_kind: None) -> None:
    distiller = gpd.Distiller(student(), dynamic_teacher=False, input_size=SIZE, branches="twin")
    assert not distiller.has_dynamic_teacher and has_twins(distiller.network)
    train(distiller, lambda x, y: distiller(x, y).loss)
    distiller.eval()
    assert_exported(distiller.export_student(), distiller.student_logits)


@pytest.mark.parametrize("gpd_on", [True, False], ids=["gpd", "baseline"])
def test_weight_selection_and_ema_merge_a_registered_kind(twin_kind: None, gpd_on: bool) -> None:
    """The trainer's exports: the best epoch on the validation split (final or EMA weights), and the
    EMA weights, through training/selection.py as the trainer calls it."""
    distiller = gpd.Distiller(student(), dynamic_teacher=gpd_on, input_size=SIZE, branches="twin", noise_std=0.0)
    network = distiller.network
    ema = ModelEmaV3(network, decay=0.5)
    selection = WeightSelection(has_val=True, has_ema=True)

    def export(weights: str) -> nn.Module:
        return standalone_student(network, ema, weights)

    def student_of(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return module.forward_student if gpd_on else module  # type: ignore[return-value]

    best: dict[str, torch.Tensor] = {}
    for epoch, val in enumerate([60.0, 80.0, 70.0], start=1):
        train(distiller, lambda x, y: distiller(x, y).loss, steps=2)
        ema.update(network)
        distiller.eval()
        ema.module.eval()
        acc = {"student": val, "val_student": val, "ema_student": val - 1, "val_ema_student": val - 1}
        if selection.update(epoch, acc, export):
            x, _ = batch(99)
            with torch.no_grad():
                best = {"final": student_of(network)(x), "ema": student_of(ema.module)(x)}
        assert_exported(export("ema"), student_of(ema.module))
        assert_exported(export("final"), student_of(network))
    assert selection.choice is not None and (selection.choice.epoch, selection.choice.weights) == (2, "final")
    assert_exported(selection.student(export), lambda x: best["final"])
