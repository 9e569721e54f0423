"""``step_rule="paper" | "plain"`` names the per-layer step rule; the old boolean ``compensate_step``
still works for one release, warns, and means the same rule (True: "plain", False: "paper")."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpd
from gpd.sharing import StudentView
from gpd.sharing.param_slice import ParamSlice
from gpd.sharing.steps import STEP_RULES

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double()


def one_step(model: gpd.GPDModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """D's parameters after one SGD step on the student's and D's CE."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model.forward_student(x), y) + F.cross_entropy(model.forward_dynamic(x), y)
    loss.backward()
    optimizer.step()
    return {n: p.detach().clone() for n, p in model.dynamic.named_parameters()}


@pytest.mark.parametrize(("old", "rule"), [(True, "plain"), (False, "paper")])
def test_compensate_step_warns_and_equals_its_step_rule(old: bool, rule: str) -> None:
    x, y = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    with pytest.warns(DeprecationWarning, match=rf"compensate_step={old}\).*use step_rule='{rule}'"):
        legacy = gpd.expand(student(), 2, example_input=x, compensate_step=old)
    model = gpd.expand(student(), 2, example_input=x, step_rule=rule)
    assert legacy.step_rule == model.step_rule == rule
    assert legacy.paper_scales == model.paper_scales and bool(model.paper_scales) == (rule == "paper")
    after_legacy, after = one_step(legacy, x, y), one_step(model, x, y)
    assert all(torch.equal(after_legacy[n], after[n]) for n in after)  # bit-identical steps


def test_the_step_rules_take_different_steps() -> None:
    x, y = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    paper = one_step(gpd.expand(student(), 2, example_input=x), x, y)
    plain = one_step(gpd.expand(student(), 2, example_input=x, step_rule="plain"), x, y)
    assert not all(torch.equal(paper[n], plain[n]) for n in paper)
    assert STEP_RULES == ("paper", "plain")


def test_step_rule_is_checked_and_both_names_are_refused() -> None:
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(gpd.ArgumentError, match="step_rule must be paper or plain, got 'compensated'"):
        gpd.expand(student(), 2, example_input=x, step_rule="compensated")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="give only step_rule"):
        gpd.expand(student(), 2, example_input=x, step_rule="plain", compensate_step=True)
    with pytest.raises(ValueError, match="compensate_step must be one of True, False, got 'yes'"):
        gpd.expand(student(), 2, example_input=x, compensate_step="yes")


def test_the_student_view_and_the_slice_read_take_the_old_boolean() -> None:
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    model = gpd.expand(student(), 2, example_input=x, step_rule="plain")
    view = model.student
    with pytest.warns(DeprecationWarning, match=r"StudentView.compensate_step is deprecated"):
        assert view.compensate_step is True
    slices, module = view.slices, view.module
    with pytest.warns(DeprecationWarning, match=r"compensate_step=True\).*step_rule='plain'"):
        assert StudentView(student(), slices, compensate_step=True).step_rule == "plain"
    with pytest.warns(DeprecationWarning, match=r"compensate_step=False\).*step_rule='paper'"):
        assert StudentView(student(), slices, False).step_rule == "paper"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step_rule must be paper or plain"):
        StudentView(module, slices, "none")  # type: ignore[arg-type]
    read = ParamSlice({}, divided_dim=None)
    theta = torch.randn(3, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match=r"ParamSlice.derive\(compensate_step=True\)"):
        assert torch.equal(read.derive(theta, compensate_step=True), theta)


@pytest.mark.parametrize("old", [True, False])
def test_a_model_pickled_with_the_old_attribute_unpickles_with_its_rule(old: bool) -> None:
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    rule = "plain" if old else "paper"
    model = gpd.expand(student(), 2, example_input=x, step_rule=rule).eval()
    with torch.no_grad():
        expected = model.forward_student(x)
    state = model.student.__dict__
    del state["step_rule"]
    state["compensate_step"] = old  # as a view pickled before step_rule existed
    restored = pickle.loads(pickle.dumps(model))
    assert restored.step_rule == rule and "compensate_step" not in restored.student.__dict__
    assert restored.paper_scales == model.paper_scales
    with torch.no_grad():
        assert torch.equal(restored.forward_student(x), expected)
        assert torch.equal(copy.deepcopy(restored).forward_student(x), expected)
