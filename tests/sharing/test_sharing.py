"""Hard parameter sharing: D's parameters are the only ones, and the student is a slice of them.

The expected student after an optimizer step is computed here independently of the
library's ParamSlice code: D's tensor restricted to the first s[d] entries of every
axis d, times r for the weight of an ungrouped conv/linear whose input axis D widened.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import gpd
from helpers import create_bundled, randomize_batchnorm, rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RATIO = 2
_CIFAR_RESNETS = ["resnet8", "resnet20", "resnet8x4"]


def make_student(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "tv_resnet18":
        model = torchvision.models.resnet18(num_classes=10)
    else:
        if not _CIFAR_RESNETS:
            pytest.skip("no bundled CIFAR resnet in gpd.models yet")
        model = create_bundled(_CIFAR_RESNETS[0], in_chans=3)
    randomize_batchnorm(model, torch.Generator().manual_seed(0), example=torch.randn(8, 3, 32, 32))
    return model


ARCHS = ["cifar_resnet", "tv_resnet18"]


def batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def predicted_student_params(
    gm: gpd.GPDModel, student: nn.Module, ratio: int, differentiable: bool = False
) -> dict[str, torch.Tensor]:
    """The student's parameters read out of D by hand (prefix slice; x r on widened conv/linear inputs)."""
    dynamic_params = dict(gm.dynamic.named_parameters())
    out = {}
    for name, s_param in student.named_parameters():
        d_param = dynamic_params[name] if differentiable else dynamic_params[name].detach()
        value = d_param[tuple(slice(0, n) for n in s_param.shape)]
        owner = student.get_submodule(name.rpartition(".")[0])
        ungrouped = isinstance(owner, nn.Linear) or (isinstance(owner, nn.modules.conv._ConvNd) and owner.groups == 1)
        is_weight = name.rpartition(".")[2] == "weight"
        if ungrouped and is_weight and s_param.ndim >= 2 and d_param.shape[1] == ratio * s_param.shape[1]:
            value = value * ratio
        out[name] = value.clone()
    return out


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("arch", ARCHS)
def test_parameters_are_the_dynamic_teachers_only(arch: str) -> None:
    gm = gpd.expand(make_student(arch), RATIO, input_size=(3, 32, 32))
    params = list(gm.parameters())
    dynamic_params = list(gm.dynamic.parameters())
    assert len(params) == len(dynamic_params)
    assert {id(p) for p in params} == {id(p) for p in dynamic_params}
    assert list(gm.student.parameters()) == []
    assert list(gm.student.module.parameters()) == []
    # the student keeps its own BatchNorm statistics as buffers
    assert any(name.startswith("student.") for name, _ in gm.named_buffers())


@pytest.mark.parametrize("arch", ARCHS)
def test_student_parameters_are_the_prefix_slices_at_init(arch: str) -> None:
    student = make_student(arch)
    gm = gpd.expand(student, RATIO, input_size=(3, 32, 32))
    derived = gm.student_parameters()
    expected = predicted_student_params(gm, student, RATIO)
    assert set(derived) == set(expected) == {n for n, _ in student.named_parameters()}
    original = dict(student.named_parameters())
    for name, value in derived.items():
        assert torch.equal(value, expected[name]), name
        assert torch.equal(value, original[name]), name


# ---------------------------------------------------------------------------- one SGD step


@pytest.mark.parametrize("arch", ARCHS)
def test_sgd_step_moves_the_student_as_the_slice_rule_predicts(arch: str) -> None:
    student = make_student(arch)
    gm = gpd.expand(student, RATIO, input_size=(3, 32, 32))
    opt = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.0)
    x, y = batch(1)

    gm.train()
    before = {n: v.detach().clone() for n, v in gm.student_parameters().items()}
    loss = F.cross_entropy(gm.forward_dynamic(x), y) + F.cross_entropy(gm.forward_student(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

    derived = {n: v.detach() for n, v in gm.student_parameters().items()}
    predicted = predicted_student_params(gm, student, RATIO)
    moved = [n for n in derived if not torch.equal(derived[n], before[n])]
    assert len(moved) > len(derived) // 2, "the step did not change the student"
    for name, value in predicted.items():
        assert rel_err(derived[name], value) <= 1e-6, name

    # a fresh copy of the student with the predicted values computes forward_student
    fresh = copy.deepcopy(student)
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            p.copy_(predicted[name])
    for name, buf in gm.student.module.named_buffers():  # the student's own running stats
        fresh.get_buffer(name).copy_(buf)
    fresh.eval()
    gm.eval()
    x_eval, _ = batch(2)
    with torch.no_grad():
        expected = fresh(x_eval)
        assert rel_err(gm.forward_student(x_eval), expected) <= 1e-5
        # and the step really changed the function
        assert rel_err(student.eval()(x_eval), expected) > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_student_loss_only_reaches_the_first_block(arch: str) -> None:
    student = make_student(arch)
    gm = gpd.expand(student, RATIO, input_size=(3, 32, 32)).train()
    x, y = batch(3)
    gm.zero_grad()
    F.cross_entropy(gm.forward_student(x), y).backward()

    conv_name = "layer1.0.conv1.weight"
    s_shape = dict(student.named_parameters())[conv_name].shape
    grad = dict(gm.dynamic.named_parameters())[conv_name].grad
    c_out, c_in = s_shape[0], s_shape[1]
    assert grad is not None and grad.shape[:2] == (RATIO * c_out, RATIO * c_in)
    assert grad[:c_out, :c_in].abs().max() > 0
    assert grad[c_out:].abs().max() == 0
    assert grad[:, c_in:].abs().max() == 0

    # every parameter of D: no gradient outside the student's block
    s_params = dict(student.named_parameters())
    for name, param in gm.dynamic.named_parameters():
        if param.grad is None:
            continue
        mask = torch.ones_like(param.grad, dtype=torch.bool)
        mask[tuple(slice(0, n) for n in s_params[name].shape)] = False
        if mask.any():
            assert param.grad[mask].abs().max().item() == 0, name


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_loss_gives_tiled_gradients(arch: str) -> None:
    """D's own loss treats the copies alike (the symmetry only the student's loss breaks)."""
    student = make_student(arch)
    gm = gpd.expand(student, RATIO, input_size=(3, 32, 32)).train()
    x, y = batch(4)
    gm.zero_grad()
    F.cross_entropy(gm.forward_dynamic(x), y).backward()
    grad = gm.dynamic.get_submodule("layer1.0.conv1").weight.grad
    c_out = grad.shape[0] // RATIO
    assert grad[c_out:].abs().max() > 0
    assert rel_err(grad[c_out:], grad[:c_out]) <= 1e-4


# ---------------------------------------------------------------------------- the student's gradient


def _student_grads(gm: gpd.GPDModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    gm.zero_grad(set_to_none=True)
    F.cross_entropy(gm.forward_student(x), y).backward()
    return {n: p.grad.clone() for n, p in gm.dynamic.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_student_gradient_equals_slicing_by_hand(memory_format: torch.memory_format) -> None:
    """The student's gradient on D equals autograd through plain indexing (x r on widened inputs)."""
    student = make_student("tv_resnet18")
    gm = gpd.expand(student, RATIO, input_size=(3, 32, 32)).train().to(memory_format=memory_format)
    x, y = batch(5)
    x = x.contiguous(memory_format=memory_format)
    got = _student_grads(gm, x, y)

    reference = copy.deepcopy(gm)
    params = predicted_student_params(reference, student, RATIO, differentiable=True)
    out = torch.func.functional_call(reference.student.module, params, (x,), strict=False)
    d_params = dict(reference.dynamic.named_parameters())
    F.cross_entropy(out, y).backward()
    expected = {n: p.grad for n, p in d_params.items() if p.grad is not None}
    assert set(got) == set(expected)
    for name, grad in got.items():
        assert torch.allclose(grad, expected[name], rtol=1e-5, atol=1e-7), name


def test_student_gradient_keeps_the_parameter_layout() -> None:
    """The gradient handed to autograd is laid out like D's channels_last weight (no layout copy)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    gm = gpd.expand(nn.Sequential(conv, nn.ReLU(), nn.Conv2d(16, 8, 3)), RATIO, input_size=(8, 6, 6))
    gm = gm.to(memory_format=torch.channels_last)
    slice_ = gm.student.slices["2.weight"]  # both axes widened: a prefix block times r
    weight = gm.dynamic.get_parameter("2.weight")
    derived = slice_.derive(weight)
    assert torch.equal(derived, weight.detach()[:8, :16] * RATIO)
    (grad,) = torch.autograd.grad(derived, weight, torch.ones_like(derived))
    assert grad.stride() == weight.stride()
    # d(derived)/d(weight) = r, times the paper-step hook of the layer writing the output: 1/r²
    assert torch.equal(grad[:8, :16], torch.full((8, 16, 3, 3), float(RATIO) / RATIO**2))
    assert weight.shape == (8, 32, 3, 3)  # the last layer's output is not widened
    assert grad[:, 16:].abs().max() == 0


@pytest.mark.parametrize(
    "arch, ratio",
    [("cifar_resnet", 1.5), ("vit", 2), ("vit", 3)],
)
def test_student_gradient_matches_the_generic_slicing_path(arch: str, ratio: float, monkeypatch) -> None:
    """Uneven copies (a per-channel scale) and fused qkv (an index on one axis) give the generic path's gradient."""
    timm = pytest.importorskip("timm")
    from gpd.sharing.param_slice import ParamSlice

    torch.manual_seed(0)
    if arch == "vit":
        student = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    else:
        student = make_student(arch)
    gm = gpd.expand(student, ratio, input_size=(3, 32, 32)).train()
    x, y = batch(6)
    got = _student_grads(gm, x, y)
    monkeypatch.setattr(ParamSlice, "_block_reader", lambda self: None)
    expected = _student_grads(gm, x, y)
    assert set(got) == set(expected)
    for name, grad in got.items():
        assert torch.allclose(grad, expected[name], rtol=1e-6, atol=0), name


# --- step_rule="plain": the r² effective step of hard sharing, removed on request -----------------


def sgd_step_of_student(gm: gpd.GPDModel, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
    """How far one SGD step on D's parameters, for the student's CE alone, moves each student parameter."""
    before = {n: p.detach().clone() for n, p in gm.student_parameters().items()}
    optimizer = torch.optim.SGD(gm.parameters(), lr=lr)
    F.cross_entropy(gm.forward_student(x), y).backward()
    optimizer.step()
    return {n: p.detach() - before[n] for n, p in gm.student_parameters().items()}


@pytest.mark.parametrize("ratio", [2, 1.5])
def test_plain_step_rule_moves_the_student_as_plain_sgd_would(ratio: float) -> None:
    """With step_rule="plain", one SGD step on D moves every student parameter by -lr * its
    gradient in the unexpanded student; without it, weights stored divided by r move r² as far."""
    student = make_student("cifar_resnet").double().train()  # float64: a step is a small difference of weights
    x, y = batch(1)
    x = x.double()
    lr = 0.05
    plain = copy.deepcopy(student)
    F.cross_entropy(plain(x), y).backward()
    expected = {n: -lr * p.grad for n, p in plain.named_parameters()}

    compensated = gpd.expand(student, ratio, example_input=x, step_rule="plain").train()
    parity = gpd.expand(student, ratio, example_input=x).train()
    with torch.no_grad():  # the option changes the backward only
        assert torch.equal(compensated.forward_student(x), parity.forward_student(x))
    moved = sgd_step_of_student(compensated, x, y, lr)
    for name, step in expected.items():
        assert rel_err(moved[name], step) <= 1e-9, name

    moved = sgd_step_of_student(
        parity, x, y, lr
    )  # the default: the paper's per-layer steps (tests/sharing/test_steps.py)
    factors = {name: (moved[name].norm() / step.norm()).item() for name, step in expected.items()}
    if ratio == 2:  # uniform copies: every factor is exactly 1 or r² = 4
        scaled = {name for name, f in factors.items() if abs(f - 4) < 1e-9}
        assert scaled and all(abs(f - 1) < 1e-9 for name, f in factors.items() if name not in scaled)
        conv_weights = {n for n in expected if n.endswith("weight") and expected[n].ndim == 4}
        assert scaled == conv_weights  # the stem too, and not the head: the paper's layout divides by output copies
    else:  # 1.5: per-channel copies of 1 or 2, so the divided weights move between 1 and 4 times as far
        assert max(factors.values()) > 1.5 and all(1 - 1e-3 < f < 4 + 1e-3 for f in factors.values())


def test_plain_step_rule_also_on_the_generic_path() -> None:
    """A slice indexed on two axes is read with ordinary ops, not _ReadBlock: same rule."""
    from gpd.channel_maps import ChannelMap
    from gpd.sharing.param_slice import ParamSlice

    def interleaved(size: int) -> ChannelMap:  # D = [c0, c0, c1, c1, ...]: the student's channels are not a prefix
        return ChannelMap(source=torch.arange(size).repeat_interleave(2), student_size=size,
                          student_index=torch.arange(0, 2 * size, 2))  # fmt: skip

    read = ParamSlice({0: interleaved(3), 1: interleaved(4)}, divided_dim=1)
    theta = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 4, dtype=torch.float64)
    for rule, factor in (("paper", 2.0), ("plain", 0.5)):
        theta.grad = None
        value = read.derive(theta, step_rule=rule)
        assert torch.equal(value, theta.detach()[0::2, 0::2] * 2)
        (value * upstream).sum().backward()
        expected = torch.zeros_like(theta)
        expected[0::2, 0::2] = factor * upstream
        assert torch.allclose(theta.grad, expected, rtol=0, atol=1e-15)
