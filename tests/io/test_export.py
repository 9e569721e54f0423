"""Export: the student comes out as a plain model of its own class (strict state_dict), D as a
standalone wide model, and neither keeps links to the GPDModel it came from."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import gpd
from helpers import create_bundled, randomize_batchnorm, rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RATIO = 2
# one of each family keeps the file fast; all bundled models are expanded in test_expansion.py
_EXPORT_BUNDLED = ["resnet8", "wrn_16_2", "mobilenetv1"]


def _tv_resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


def make(arch: str, in_chans: int = 3) -> tuple[nn.Module, object]:
    """A student and a factory that builds a fresh (differently initialised) instance of it."""
    if arch == "tv_resnet18":
        factory = _tv_resnet18
    else:
        factory = lambda: create_bundled(arch, in_chans=in_chans)  # noqa: E731
    torch.manual_seed(0)
    model = factory()
    randomize_batchnorm(model, torch.Generator().manual_seed(0), example=torch.randn(8, in_chans, 32, 32))
    return model, factory


def data(seed: int, n: int = 4, in_chans: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_chans, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def sgd_steps(gm: gpd.GPDModel, steps: int, in_chans: int = 3) -> None:
    opt = torch.optim.SGD(gm.parameters(), lr=0.05, momentum=0.9)
    gm.train()
    for step in range(steps):
        x, y = data(10 + step, in_chans=in_chans)
        loss = F.cross_entropy(gm.forward_dynamic(x), y) + F.cross_entropy(gm.forward_student(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def check_exported_student(gm: gpd.GPDModel, student: nn.Module, factory, in_chans: int) -> None:
    exported = gm.export_student()
    assert type(exported) is type(student)
    fresh = factory()
    fresh.load_state_dict(exported.state_dict(), strict=True)
    assert list(fresh.state_dict()) == list(student.state_dict())
    fresh.eval()
    exported.eval()
    gm.eval()
    x, _ = data(99, in_chans=in_chans)
    with torch.no_grad():
        expected = gm.forward_student(x)
        assert rel_err(exported(x), expected) <= 1e-6
        assert rel_err(fresh(x), expected) <= 1e-6


ARCHS = ["tv_resnet18", *_EXPORT_BUNDLED]


@pytest.mark.parametrize("arch", ARCHS)
def test_export_student_loads_strictly_and_matches(arch: str) -> None:
    in_chans = 1 if arch == "wrn_16_2" else 3
    student, factory = make(arch, in_chans)
    gm = gpd.expand(student, RATIO, input_size=(in_chans, 32, 32))
    check_exported_student(gm, student, factory, in_chans)
    sgd_steps(gm, 3, in_chans)
    check_exported_student(gm, student, factory, in_chans)
    # the exported parameters keep the student's requires_grad and are leaves
    exported = gm.export_student()
    assert all(p.requires_grad and p.is_leaf for p in exported.parameters())
    assert [n for n, _ in exported.named_parameters()] == [n for n, _ in student.named_parameters()]


def test_export_dynamic_is_standalone_and_equal() -> None:
    student, _ = make("tv_resnet18")
    gm = gpd.expand(student, RATIO, input_size=(3, 32, 32))
    sgd_steps(gm, 2)
    dynamic = gm.export_dynamic()
    assert type(dynamic) is type(student)
    assert not isinstance(dynamic, gpd.GPDModel)
    gm_ptrs = {p.data_ptr() for p in gm.parameters()} | {b.data_ptr() for b in gm.buffers()}
    assert not gm_ptrs & {t.data_ptr() for t in dynamic.state_dict().values()}
    assert dynamic.conv1.out_channels == 2 * student.conv1.out_channels  # a plain wide network
    dynamic.eval()
    gm.eval()
    x, _ = data(7)
    with torch.no_grad():
        expected = gm.forward_dynamic(x)
        assert torch.equal(dynamic(x), expected)
        for p in gm.parameters():
            p.mul_(0.5)
        assert torch.equal(dynamic(x), expected)


def test_exported_student_has_no_links_to_the_dynamic_teacher() -> None:
    student, _ = make("tv_resnet18")
    gm = gpd.expand(student, RATIO, input_size=(3, 32, 32))
    sgd_steps(gm, 1)
    exported = gm.export_student().eval()
    x, y = data(5)
    with torch.no_grad():
        before = exported(x).clone()
    saved = {k: v.clone() for k, v in exported.state_dict().items()}

    # no shared storage with D's parameters or the student view's buffers
    gm_ptrs = {p.data_ptr() for p in gm.parameters()} | {b.data_ptr() for b in gm.buffers()}
    assert not gm_ptrs & {t.data_ptr() for t in exported.state_dict().values()}

    # change D in place, and train it (which also moves the student view's running stats)
    with torch.no_grad():
        for p in gm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sgd_steps(gm, 2)
    with torch.no_grad():
        assert torch.equal(exported(x), before)
    for k, v in exported.state_dict().items():
        assert torch.equal(v, saved[k]), k

    # and training the exported student leaves D alone
    d_before = {n: p.detach().clone() for n, p in gm.dynamic.named_parameters()}
    opt = torch.optim.SGD(exported.parameters(), lr=0.1)
    exported.train()
    F.cross_entropy(exported(x), y).backward()
    opt.step()
    for n, p in gm.dynamic.named_parameters():
        assert torch.equal(p, d_before[n]), n
