"""Channel-Branch Reparameterization: six-branch 3x3 blocks, their merge, and their expansion.

The reference for a block is each branch run SEPARATELY as the real ops it stands for
(1x1 conv then average pooling, 1x1 then 3x3, depthwise then pointwise, ...), never the
block's own merging code. The reference for D's block is the built-in conv rule applied
to the student's merged kernel.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import gpd
from gpd.branches import (
    OREPAConv2d,
    add_branches,
    count_branch_blocks,
    is_branchable,
    merge_branches,
)
from gpd.branches.expansion_rule import expand_orepa, interleaved_map
from gpd.expansion import LayerContext, WidthPlan
from gpd.expansion.torch_rules import expand_conv
from gpd.models import create_model
from helpers import randomize_batchnorm, rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def randomized_block(conv: nn.Conv2d, seed: int) -> OREPAConv2d:
    """A block with every tensor random, W_id and the scales included (nothing trivially zero)."""
    gen = torch.Generator().manual_seed(seed)
    block = OREPAConv2d.from_conv(conv, "default", generator=gen)
    with torch.no_grad():
        block.weight_id_1x1.copy_(0.3 * torch.randn(block.weight_id_1x1.shape, generator=gen, dtype=torch.float64))
        block.branch_scales.copy_(torch.randn(block.branch_scales.shape, generator=gen, dtype=torch.float64))
    return block


def dct_basis(index: int) -> torch.Tensor:
    """Orthonormal 2-D DCT-II basis ``index`` (u = index // 3, v = index % 3), written out with loops."""
    u, v = divmod(index, 3)
    c = [math.sqrt(1 / 3), math.sqrt(2 / 3), math.sqrt(2 / 3)]
    basis = torch.empty(3, 3, dtype=torch.float64)
    for h in range(3):
        for w in range(3):
            basis[h, w] = (
                c[u] * c[v] * math.cos(math.pi * (2 * h + 1) * u / 6) * math.cos(math.pi * (2 * w + 1) * v / 6)
            )
    return basis


def branch_outputs(block: OREPAConv2d, x: torch.Tensor) -> list[torch.Tensor]:
    """The six branches applied to x as separate real ops, before the per-channel scales."""
    g, pad, dil = block.groups, block.padding, block.dilation
    ig = block.in_channels // g

    def conv3(inp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inp, kernel, None, 1, pad, dil, g)

    def conv1(inp: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        return F.conv2d(inp, weight[:, :, None, None], groups=groups)

    after_avg_1x1 = conv1(x, block.weight_avg, g)
    if tuple(dil) == (1, 1) and tuple(pad) == (1, 1):
        b1 = F.avg_pool2d(after_avg_1x1, 3, stride=1, padding=1, count_include_pad=True)
    else:  # pooling cannot dilate: the branch is a dilated 3x3 average (ones / 9, zero padding)
        ones = torch.full((block.out_channels, 1, 3, 3), 1 / 9, dtype=x.dtype)
        b1 = F.conv2d(after_avg_1x1, ones, None, 1, pad, dil, block.out_channels)
    identity = torch.eye(ig, dtype=x.dtype).repeat(g, 1)  # (I, Ig): Id within each group
    b3 = conv3(conv1(x, identity + block.weight_id_1x1, g), block.weight_3x3_after_1x1)
    depthwise = F.conv2d(x, block.weight_dw, None, 1, pad, dil, block.in_channels)  # 8 filters per channel
    b5 = conv1(depthwise, block.weight_pw, g)
    return [
        conv3(x, block.weight_3x3),
        b1,
        conv3(x, block.weight_prior[:, :, None, None] * block.prior[:, None]),
        b3,
        conv3(x, block.weight_3x3_extra),
        b5,
    ]


CONV_CASES = [
    pytest.param(dict(in_channels=6, out_channels=10, groups=1, padding=1, dilation=1, bias=True), id="g1"),
    pytest.param(dict(in_channels=6, out_channels=10, groups=2, padding=1, dilation=1, bias=False), id="g2"),
    pytest.param(dict(in_channels=6, out_channels=6, groups=6, padding=1, dilation=1, bias=True), id="depthwise"),
    pytest.param(dict(in_channels=6, out_channels=10, groups=1, padding=2, dilation=2, bias=False), id="g1-dil2"),
    pytest.param(dict(in_channels=6, out_channels=10, groups=2, padding=2, dilation=2, bias=True), id="g2-dil2"),
    pytest.param(dict(in_channels=6, out_channels=6, groups=6, padding=2, dilation=2, bias=False), id="depthwise-dil2"),
]


@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_merged_kernel_is_the_sum_of_the_branches_as_real_ops(kwargs: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(kernel_size=3, **kwargs).double()
    block = randomized_block(conv, seed=1)
    x = torch.randn(2, kwargs["in_channels"], 9, 11, dtype=torch.float64)
    with torch.no_grad():
        outputs = branch_outputs(block, x)
        for b, (kernel, expected) in enumerate(zip(block.branch_kernels(), outputs)):
            got = F.conv2d(x, kernel, None, 1, block.padding, block.dilation, block.groups)
            assert (got - expected).abs().max() <= 1e-10, f"branch {b}"
        expected = sum(block.branch_scales[b].view(1, -1, 1, 1) * out for b, out in enumerate(outputs))
        if conv.bias is not None:
            expected = expected + conv.bias.view(1, -1, 1, 1)
        assert (block(x) - expected).abs().max() <= 1e-10
        assert (block.to_conv()(x) - expected).abs().max() <= 1e-10


def test_prior_is_the_dct_basis_of_each_output_channel() -> None:
    block = OREPAConv2d.from_conv(nn.Conv2d(4, 20, 3, padding=1).double())
    for o in range(20):
        assert torch.allclose(block.prior[o], dct_basis(o % 9), atol=1e-12)
    flat = block.prior[:9].reshape(9, 9)
    assert torch.allclose(flat @ flat.T, torch.eye(9, dtype=torch.float64), atol=1e-12)  # orthonormal


def test_default_scales_and_zero_inner_1x1() -> None:
    block = OREPAConv2d.from_conv(nn.Conv2d(4, 8, 3, padding=1))
    expected = torch.tensor([0.25, 0.25, 0.0, 0.5, 0.05, 0.5])[:, None].expand(6, 8)
    assert torch.equal(block.branch_scales, expected)
    assert not block.weight_id_1x1.any()
    assert block.bias is not None and block.weight_dw.shape == (32, 1, 3, 3) and block.weight_pw.shape == (8, 32)


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_identity_init_equals_the_conv_and_default_does_not(groups: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        expected = conv(x)
        assert rel_err(OREPAConv2d.from_conv(conv, "identity")(x), expected) <= 1e-6
        assert rel_err(OREPAConv2d.from_conv(conv, "default")(x), expected) > 1e-2


def test_to_conv_equals_the_forward_and_keeps_class_and_bias() -> None:
    class TaggedConv(nn.Conv2d):
        """A subclass that keeps Conv2d's forward: branchable, and merged back into its class."""

    torch.manual_seed(0)
    conv = TaggedConv(6, 12, 3, padding=1, bias=True).double()
    block = randomized_block(conv, seed=2)
    merged = block.to_conv()
    assert type(merged) is TaggedConv and merged.weight.dtype == torch.float64
    assert torch.equal(merged.bias, block.bias) and merged.weight.requires_grad
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert (merged(x) - block(x)).abs().max() <= 1e-12
    assert set(block.state_dict()) >= {"prior", "weight_3x3", "branch_scales", "bias"}


def test_merged_kernel_is_differentiable_in_every_branch() -> None:
    block = randomized_block(nn.Conv2d(4, 8, 3, padding=1, groups=2).double(), seed=3)
    block(torch.randn(2, 4, 6, 6, dtype=torch.float64)).square().sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 4, 5, padding=2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.ConvTranspose2d(4, 4, 3, padding=1),
        nn.Conv1d(4, 4, 3, padding=1),
    ],
    ids=["5x5", "stride2", "reflect", "transposed", "conv1d"],
)
def test_unsupported_convs_are_refused_with_one_line(conv: nn.Module) -> None:
    assert not is_branchable(conv)
    with pytest.raises(gpd.ModelError) as info:
        OREPAConv2d.from_conv(conv)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_convs_with_other_padding_or_forward_are_left_alone() -> None:
    class StandardizedConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # a different function of its weight
            w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
            return self._conv_forward(x, w, self.bias)

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.Conv2d(8, 8, 3, padding=0),
        StandardizedConv(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding="same"),
    )
    branched = add_branches(model)
    assert [type(m).__name__ for m in branched] == [
        "OREPAConv2d", "Conv2d", "Conv2d", "StandardizedConv", "OREPAConv2d",
    ]  # fmt: skip
    assert isinstance(model[0], nn.Conv2d)  # the argument is not modified
    with pytest.raises(gpd.ModelError, match="overrides"):
        OREPAConv2d.from_conv(model[3])
    # explicitly converted, a dilated conv works (branch 1 is then a dilated average)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        assert rel_err(OREPAConv2d.from_conv(model[1], "identity")(x), model[1](x)) <= 1e-6


def expected_branchable(model: nn.Module) -> int:
    """Convs the branches should replace, counted independently of is_branchable."""
    return sum(
        type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
        and m.dilation == (1, 1)
        for m in model.modules()
    )  # fmt: skip


def with_random_statistics(model: nn.Module, in_chans: int) -> nn.Module:
    """Random BatchNorm statistics calibrated on ``model`` itself, so activations keep their scale.

    (Statistics calibrated before adding "default" branches no longer fit the new kernels:
    mobilenet_v2's activations then grow until float32 loses ~1% on the student alone.)
    """
    example = torch.randn(8, in_chans, 32, 32, generator=torch.Generator().manual_seed(1))
    return randomize_batchnorm(model, torch.Generator().manual_seed(0), example=example).eval()


def make_resnet8() -> nn.Module:
    torch.manual_seed(0)
    return with_random_statistics(create_model("resnet8", 10, 1), 1)


def make_mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return with_random_statistics(torchvision.models.mobilenet_v2(num_classes=10), 3)


def branched(factory, in_chans: int) -> nn.Module:
    """``factory()`` with "default" branches and statistics calibrated after branching."""
    return with_random_statistics(
        add_branches(factory(), "default", generator=torch.Generator().manual_seed(0)), in_chans
    )


@pytest.mark.parametrize(
    "factory, in_chans, blocks", [(make_resnet8, 1, 5), (make_mobilenet_v2, 3, 13)], ids=["resnet8", "mobilenet_v2"]
)
def test_add_then_merge_gives_back_the_original_model(factory, in_chans: int, blocks: int) -> None:
    model = factory()
    assert expected_branchable(model) == blocks
    branched = add_branches(model, "identity")
    assert count_branch_blocks(branched) == blocks and count_branch_blocks(model) == 0
    merged = merge_branches(branched)
    assert count_branch_blocks(merged) == 0 and count_branch_blocks(branched) == blocks
    original, restored = model.state_dict(), merged.state_dict()
    assert list(restored) == list(original)
    assert all(restored[k].shape == original[k].shape for k in original)
    fresh = factory()
    fresh.load_state_dict(restored, strict=True)
    x = torch.randn(2, in_chans, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert rel_err(branched.eval()(x), expected) <= 1e-6
        assert rel_err(fresh(x), expected) <= 1e-6


# --- expansion ------------------------------------------------------------------------


def conv_ctx(ratio: float, expand_input: bool = True, expand_output: bool = True) -> LayerContext:
    return LayerContext("block", WidthPlan(ratio), expand_input=expand_input, expand_output=expand_output)


@pytest.mark.parametrize(
    "in_ch, out_ch, groups, ratio, expand_input, expand_output",
    [
        (6, 10, 1, 2, True, True),
        (6, 10, 1, 3, True, True),
        (1, 8, 1, 2, False, True),  # reads the image: nothing divided, W_id a single block
        (3, 8, 1, 1.5, False, True),  # ... which also works at a non-integer ratio
        (6, 10, 1, 2, True, False),  # writes the output
        (6, 10, 2, 2, True, True),
        (6, 6, 6, 3, True, True),
        (6, 6, 6, 1.5, True, True),  # depthwise: uneven copies are exact
    ],
)
def test_dynamic_block_merges_to_the_ir_of_the_student_kernel(
    in_ch, out_ch, groups, ratio, expand_input, expand_output
) -> None:
    torch.manual_seed(0)
    block = randomized_block(nn.Conv2d(in_ch, out_ch, 3, padding=1, groups=groups, bias=True).double(), seed=4)
    ctx = conv_ctx(ratio, expand_input, expand_output)
    layer = expand_orepa(block, ctx)
    expected = expand_conv(block.to_conv(), ctx).module
    wide = layer.module
    assert isinstance(wide, OREPAConv2d)
    assert (wide.in_channels, wide.out_channels, wide.groups) == (
        expected.in_channels, expected.out_channels, expected.groups,
    )  # fmt: skip
    with torch.no_grad():
        assert (wide.merged_kernel() - expected.weight).abs().max() <= 1e-12
        assert torch.equal(wide.bias, expected.bias)
        x = torch.randn(2, expected.in_channels, 7, 7, dtype=torch.float64)
        assert (wide(x) - expected(x)).abs().max() <= 1e-12
    params = dict(wide.named_parameters())
    assert set(layer.params) == set(params)
    for name, param in block.named_parameters():  # the student reads its own tensors back
        assert (layer.params[name].derive(params[name]) - param).abs().max() <= 1e-12, name


@pytest.mark.parametrize("ratio", [2, 3])
def test_depthwise_axis_map_is_the_plain_tile_for_integer_ratios(ratio: int) -> None:
    plan = WidthPlan(ratio)
    dw_map = interleaved_map(plan.map(5))
    assert torch.equal(dw_map.source, plan.map(8 * 5).source)
    assert torch.equal(dw_map.student_index, plan.map(8 * 5).student_index)


def assert_student_params_equal(gm: gpd.GPDModel, student: nn.Module, exact: bool) -> None:
    derived = gm.student_parameters()
    for name, param in student.named_parameters():
        if exact:
            assert torch.equal(derived[name], param), name
        else:
            assert rel_err(derived[name], param) <= 1e-6, name


@pytest.mark.parametrize("ratio", [2, 3])
def test_expanded_resnet8_with_branches_matches_in_eval_and_train_mode(ratio: int) -> None:
    student = branched(make_resnet8, 1)
    gm = gpd.expand(student, ratio, input_size=(1, 32, 32))
    assert gm.report.rules_used["expand_orepa"] == [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer2.0.conv2",
        "layer3.0.conv2",
    ]
    assert gm.dynamic.layer1[0].conv1.weight_id_1x1.shape == (16 * ratio, 16 * ratio)
    assert_student_params_equal(gm, student, exact=ratio == 2)  # x2 then /2 is exact in binary
    x = torch.randn(8, 1, 32, 32)
    reference, gm_train = copy.deepcopy(student).train(), copy.deepcopy(gm).train()
    with torch.no_grad():
        expected = reference(x)
        assert rel_err(gm_train.forward_dynamic(x), expected) <= 1e-4
        assert rel_err(gm_train.forward_student(x), expected) <= 1e-4


def test_expanded_mobilenet_v2_with_branches_matches() -> None:
    student = branched(make_mobilenet_v2, 3)
    gm = gpd.expand(student, 2, input_size=(3, 32, 32))
    assert len(gm.report.rules_used["expand_orepa"]) == 13
    block = gm.dynamic.features[3].conv[1][0]  # a stride-1 depthwise block
    assert isinstance(block, OREPAConv2d) and block.groups == block.in_channels == 2 * 144
    assert_student_params_equal(gm, student, exact=True)
    assert gm.report.dynamic_error <= 1e-4 and not gm.report.checked_in_float64
    gm.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(gm.forward_dynamic(x), student(x)) <= 1e-4


def test_training_with_branches_then_merged_export() -> None:
    student = branched(make_resnet8, 1)
    gm = gpd.expand(student, 2, input_size=(1, 32, 32)).train()
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss = F.cross_entropy(gm.forward_dynamic(x), y) + F.cross_entropy(gm.forward_student(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gm.eval()
    exported = merge_branches(gm.export_student()).eval()
    assert count_branch_blocks(exported) == 0
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert rel_err(exported(x), gm.forward_student(x)) <= 1e-5
    fresh = create_model("resnet8", 10, 1)
    fresh.load_state_dict(exported.state_dict(), strict=True)


def test_non_integer_ratio_with_branches_is_refused() -> None:
    student = add_branches(make_resnet8())
    with pytest.raises(gpd.ExpansionError, match="integer ratio") as info:
        gpd.expand(student, 1.5, input_size=(1, 32, 32))
    assert "\n" not in str(info.value)
    assert "layer1.0.conv1" in str(info.value)
