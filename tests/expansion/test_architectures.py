"""Exact expansion of torchvision and timm classifiers, CNNs and vision transformers.

Random weights, random BatchNorm statistics, eval mode, float32: D and the student view
must equal the original within a relative error of 1e-4 at every supported ratio, the
exported student must load strictly into a fresh instance, and unsupported ratios must
be refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from torch import nn

import gpd
from gpd.models import create_model
from gpd.testing import perturbed_for_verification
from helpers import assert_nontrivial, rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TOL = 1e-4
Factory = Callable[[], nn.Module]


def tv(name: str) -> Factory:
    return lambda: torchvision.models.get_model(name, num_classes=10)


def tm(name: str, **kwargs) -> Factory:
    return lambda: timm.create_model(name, num_classes=10, **kwargs)


def bundled(name: str) -> Factory:
    extra = {"small_input": True} if name == "mobilenetv1" else {}
    return lambda: create_model(name, num_classes=10, in_chans=3, **extra)


SLOW_BUNDLED = {"resnet110", "resnet32x4", "wrn_28_10", "wrn_28_4", "wrn_40_4", "wrn_16_4", "resnet56", "resnet44"}
CNNS: list = [
    *(pytest.param(f"tv:{n}", tv(n), marks=[pytest.mark.slow] if n == "vgg11_bn" else [], id=f"tv:{n}")
      for n in ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vgg11_bn"]),
    *(pytest.param(f"timm:{n}", tm(n), id=f"timm:{n}") for n in ["resnet18", "mobilenetv1_100"]),
    *(pytest.param(n, bundled(n), marks=[pytest.mark.slow] if n in SLOW_BUNDLED else [], id=n)
      for n in gpd.models.list_models() if not n.startswith("rvt")),
]  # fmt: skip
TRANSFORMERS: list = [
    pytest.param(tm("vit_tiny_patch16_224", img_size=32), id="timm:vit_tiny_patch16_224"),
    pytest.param(tm("deit_tiny_patch16_224", img_size=32), id="timm:deit_tiny_patch16_224"),
    pytest.param(tm("deit_tiny_distilled_patch16_224", img_size=32), id="timm:deit_tiny_distilled_patch16_224"),
    pytest.param(tm("convnext_atto"), id="timm:convnext_atto"),
    pytest.param(lambda: create_model("rvt_tiny", 10, 3, img_size=32), id="rvt_tiny"),
]


def prepared(factory: Factory, seed: int = 0) -> nn.Module:
    """A model with every parameter perturbed and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    return perturbed_for_verification(factory(), (3, 32, 32), seed)


def check_exact(factory: Factory, ratio: float) -> None:
    student = prepared(factory)
    gm = gpd.expand(student, ratio, input_size=(3, 32, 32)).eval()
    assert gm.report.dynamic_error <= TOL and gm.report.student_error <= TOL
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = student(x)
        assert_nontrivial(expected)
        assert rel_err(gm.forward_dynamic(x), expected) <= TOL
        assert rel_err(gm.forward_student(x), expected) <= TOL
        exported = gm.export_student()
        fresh = factory()
        fresh.load_state_dict(exported.state_dict(), strict=True)
        assert rel_err(fresh.eval()(x), gm.forward_student(x)) <= 1e-6


@pytest.mark.parametrize("ratio", [2, 3, 1.5])
@pytest.mark.parametrize("name, factory", CNNS)
def test_cnn_expands_exactly(name: str, factory: Factory, ratio: float) -> None:
    check_exact(factory, ratio)


@pytest.mark.parametrize("ratio", [2, 3])
@pytest.mark.parametrize("factory", TRANSFORMERS)
def test_transformer_expands_exactly(factory: Factory, ratio: float) -> None:
    check_exact(factory, ratio)


@pytest.mark.parametrize("factory", TRANSFORMERS)
def test_transformer_refuses_ratio_1_5_with_the_reason(factory: Factory) -> None:
    with pytest.raises(gpd.ExpansionError) as info:
        gpd.expand(prepared(factory), 1.5, input_size=(3, 32, 32))
    message = str(info.value)
    assert "\n" not in message and "ratio 1.5" in message and "integer ratio" in message


def test_attention_heads_multiply_and_keep_their_dimension() -> None:
    gm = gpd.expand(prepared(TRANSFORMERS[0].values[0]), 3, input_size=(3, 32, 32))
    attn_s, attn_d = gm.student.module.blocks[0].attn, gm.dynamic.blocks[0].attn
    assert attn_d.num_heads == 3 * attn_s.num_heads and attn_d.head_dim == attn_s.head_dim
    assert gm.dynamic.cls_token.shape[-1] == 3 * gm.export_student().cls_token.shape[-1]


def test_distilled_vit_has_both_heads_found() -> None:
    gm = gpd.expand(prepared(TRANSFORMERS[2].values[0]), 2, input_size=(3, 32, 32))
    assert gm.report.roles.output_layers == {"head", "head_dist"}
    assert gm.report.roles.input_layers == {"patch_embed.proj"}


def independent_student_value(name: str, dynamic: torch.Tensor, shape: torch.Size, ratio: int) -> torch.Tensor:
    """The student's tensor from D's, by the rule written out by hand (not the library's code)."""
    value = dynamic
    for dim, (big, small) in enumerate(zip(dynamic.shape, shape)):
        if big == small:
            continue
        if name.endswith(("qkv.weight", "qkv.bias")) and dim == 0:  # [q..q, k..k, v..v] segments
            third = small // 3
            value = torch.cat([value.narrow(0, s * ratio * third, third) for s in range(3)], 0)
        else:
            value = value.narrow(dim, 0, small)
    divided = (
        value.ndim >= 2 and dynamic.shape[1] == ratio * shape[1] and "token" not in name and "pos_embed" not in name
    )
    return value * ratio if divided else value


def test_sgd_step_on_transformer_moves_the_student_by_the_rule() -> None:
    ratio = 2
    student = prepared(TRANSFORMERS[0].values[0])
    gm = gpd.expand(student, ratio, input_size=(3, 32, 32)).train()
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.5)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(gm.forward_dynamic(x), y) + nn.functional.cross_entropy(gm.forward_student(x), y)
    loss.backward()
    optimizer.step()

    dynamic_params = dict(gm.dynamic.named_parameters())
    expected = {
        name: independent_student_value(name, dynamic_params[name].detach(), p.shape, ratio)
        for name, p in student.named_parameters()
    }
    derived = gm.student_parameters()
    moved = 0
    for name, value in expected.items():
        assert torch.allclose(derived[name], value, rtol=0, atol=1e-7), name
        moved += int(not torch.equal(value, dict(student.named_parameters())[name]))
    assert moved > len(expected) // 2  # the step really changed the student

    reference = TRANSFORMERS[0].values[0]()
    reference.load_state_dict({**student.state_dict(), **expected}, strict=True)
    gm.eval()
    with torch.no_grad():
        assert rel_err(gm.forward_student(x), reference.eval()(x)) <= 1e-5
