"""Branches through the public API: expand(branches=...), export, fine-tuning start, a CLI run."""

from __future__ import annotations

import csv

import pytest
import torch
import torchvision

import gpd
from gpd.branches import OREPAConv2d, count_branch_blocks
from gpd.cli.main import main
from gpd.models import create_model
from gpd.testing import perturbed_for_verification
from helpers import QUICK, needs_fashion_mnist, rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_expand_with_branches_keeps_d_equal_to_s_and_exports_plain_convs():
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_chans=1)
    model = gpd.expand(student, 2, input_size=(1, 28, 28), branches="orepa")
    assert count_branch_blocks(model.dynamic) == count_branch_blocks(model.student.module) == 5
    x = torch.randn(4, 1, 28, 28)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(3):
        y = torch.randint(0, 10, (4,))
        loss = sum(torch.nn.functional.cross_entropy(f(x), y) for f in (model.forward_dynamic, model.forward_student))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    exported = model.export_student()
    assert count_branch_blocks(exported) == 0
    fresh = create_model("resnet8", num_classes=10, in_chans=1)
    fresh.load_state_dict(exported.state_dict(), strict=True)
    with torch.no_grad():
        assert rel_err(fresh.eval()(x), model.forward_student(x)) <= 1e-5
        dynamic = model.export_dynamic().eval()
        assert not any(isinstance(m, OREPAConv2d) for m in dynamic.modules())
        assert rel_err(dynamic(x), model.forward_dynamic(x)) <= 1e-5


def test_identity_branches_start_equal_to_the_pretrained_student():
    torch.manual_seed(0)
    pretrained = perturbed_for_verification(torchvision.models.resnet18(num_classes=10), (3, 32, 32))
    model = gpd.expand(pretrained, 2, input_size=(3, 32, 32), branches="orepa", branch_init="identity").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = pretrained(x)
        assert rel_err(model.forward_student(x), expected) <= 1e-5
        assert rel_err(model.forward_dynamic(x), expected) <= 1e-4


def test_unknown_branch_kind_is_refused():
    with pytest.raises(gpd.ArgumentError, match="branches must be"):
        gpd.expand(create_model("resnet8", 10, 1), 2, input_size=(1, 28, 28), branches="repvgg")


@needs_fashion_mnist
def test_fashion_mnist_run_with_branches_trains_and_exports(tmp_path, capsys):
    run_dir = tmp_path / "branches"
    assert main(["train", f"output_dir={run_dir}", "gpd.branches=orepa", *QUICK]) == 0
    row = list(csv.DictReader(open(run_dir / "metrics.csv")))[-1]
    assert float(row["student_acc"]) > 30.0
    student = gpd.load_student(run_dir / "student.pt")
    assert count_branch_blocks(student) == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    accuracy = float(capsys.readouterr().out.split("test accuracy ")[1].split("%")[0])
    assert accuracy == pytest.approx(float(row["student_acc"]), abs=0.01)
