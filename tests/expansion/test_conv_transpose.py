"""Transposed convolutions expand exactly: U-Net-style decoders (1-D, 2-D, 3-D), grouped and
depthwise ones, one that reads the image and one that writes the output.

Each model is perturbed (gpd.testing.perturbed_for_verification) and run in float64: D and the
student view must equal the unexpanded student, the export must load strictly into a fresh
instance and compute the same, at r = 2, 3 and 1.5, in the tiled and the interleaved layouts.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import gpd
from gpd.errors import ExpansionError
from gpd.testing import perturbed_for_verification
from helpers import assert_nontrivial, rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TOL = 1e-10  # float64

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class TinyUNet(nn.Module):
    """Two encoder stages, a transposed conv up-sampling, a skip concatenation, a 1x1 head of class logits."""

    def __init__(self, dims: int = 2, in_chans: int = 3, classes: int = 4) -> None:
        super().__init__()
        conv, conv_t, norm = CONV[dims], CONV_T[dims], NORM[dims]
        self.enc1, self.bn1 = conv(in_chans, 8, 3, padding=1), norm(8)
        self.enc2, self.bn2 = conv(8, 16, 3, stride=2, padding=1), norm(16)
        self.up2 = conv_t(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.dec = conv(16, 8, 3, padding=2, dilation=2)
        self.bn3 = norm(8)
        self.head = conv(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.bn1(self.enc1(x)))
        deep = torch.relu(self.bn2(self.enc2(skip)))
        up = self.up2(deep)
        return self.head(torch.relu(self.bn3(self.dec(torch.cat([up, skip], 1)))))


class GroupedDecoder(nn.Module):
    """Grouped and depthwise transposed convs (with dilation, a channel multiplier, output_size=)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.grouped = nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(12)
        self.depthwise = nn.ConvTranspose2d(12, 12, 3, padding=2, dilation=2, groups=12)
        self.multiplier = nn.ConvTranspose2d(12, 24, 1, groups=12, bias=False)
        self.head = nn.Conv2d(24, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.bn(self.grouped(h, output_size=x.shape[-2:])))
        return self.head(torch.relu(self.multiplier(torch.relu(self.depthwise(h)))))


class TransposedHead(nn.Module):
    """An encoder whose last layer, a transposed conv, writes the per-pixel logits."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.enc(x))))


class TransposedStem(nn.Module):
    """A transposed conv reads the image (a super-resolution-style stem), then convs and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 8, 2, stride=2)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.up_grouped = nn.ConvTranspose2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(torch.relu(self.up(x))))
        return self.fc(torch.relu(self.up_grouped(h)).mean((2, 3)))


SIZE = {1: (3, 16), 2: (3, 8, 8), 3: (3, 4, 4, 4)}
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "unet1d": (lambda: TinyUNet(1), SIZE[1]),
    "unet2d": (lambda: TinyUNet(2), SIZE[2]),
    "unet3d": (lambda: TinyUNet(3), SIZE[3]),
    "grouped": (GroupedDecoder, SIZE[2]),
    "transposed_head": (TransposedHead, SIZE[2]),
    "transposed_stem": (TransposedStem, SIZE[2]),
}


def check_exact(name: str, ratio: float, layout: str) -> gpd.GPDModel:
    factory, size = MODELS[name]
    torch.manual_seed(0)
    student = perturbed_for_verification(factory(), size).double()
    example = torch.randn(2, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gm = gpd.expand(student, ratio, example_input=example, layout=layout).eval()
    x = torch.randn(3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = student(x)
        assert_nontrivial(expected)
        assert rel_err(gm.forward_dynamic(x), expected) <= TOL
        assert rel_err(gm.forward_student(x), expected) <= TOL
        fresh = factory().double().eval()
        fresh.load_state_dict(gm.export_student().state_dict(), strict=True)
        assert rel_err(fresh(x), expected) <= TOL
    return gm


SPLITS_A_GROUP = r"ratio 1.5 splits a group across copies; use an integer ratio"  # as a grouped conv is


@pytest.mark.parametrize("layout", ["tiled", "interleaved"])
@pytest.mark.parametrize("ratio", [2, 3, 1.5])
@pytest.mark.parametrize("name", ["unet1d", "unet2d", "unet3d", "transposed_head", "transposed_stem"])
def test_transposed_convs_expand_exactly(name: str, ratio: float, layout: str) -> None:
    if (name, ratio, layout) == ("transposed_stem", 1.5, "interleaved"):  # [0 0 1 1 2 2 3 3 4 5 6 7]: groups of 4 split
        with pytest.raises(ExpansionError, match=rf"layer 'up_grouped' \(ConvTranspose2d\): {SPLITS_A_GROUP}"):
            check_exact(name, ratio, layout)
        return
    gm = check_exact(name, ratio, layout)
    wide = [m for m in gm.dynamic.modules() if isinstance(m, nn.modules.conv._ConvTransposeNd)]
    assert wide and all(m.in_channels > 3 or m.out_channels > 4 for m in wide)


@pytest.mark.parametrize("layout", ["tiled", "interleaved"])
@pytest.mark.parametrize("ratio", [2, 3, 1.5])
def test_grouped_and_depthwise_transposed_convs_expand_exactly(ratio: float, layout: str) -> None:
    if ratio == 1.5 and layout == "interleaved":
        with pytest.raises(ExpansionError, match=rf"layer 'grouped' \(ConvTranspose2d\): {SPLITS_A_GROUP}"):
            check_exact("grouped", ratio, layout)
        return
    gm = check_exact("grouped", ratio, layout)
    d = gm.dynamic
    assert d.depthwise.groups == d.depthwise.in_channels == round(12 * ratio)  # depthwise: tiled in either layout
    assert d.multiplier.groups == round(12 * ratio) and d.multiplier.out_channels == round(24 * ratio)
    # grouped: r times the groups (tiled), or the student's groups r times wider (interleaved)
    assert d.grouped.groups == (round(4 * ratio) if layout == "tiled" else 4)


class UnevenGroups(nn.Module):
    """Groups of two channels: 6 channels at r = 1.5 are 9, no whole number of groups."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.grouped = nn.ConvTranspose2d(6, 6, 3, padding=1, groups=3)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.grouped(torch.relu(self.stem(x)))))


def test_grouped_transposed_convs_that_do_not_split_into_groups_are_refused_naming_the_layer() -> None:
    student = UnevenGroups()
    with pytest.raises(ExpansionError, match=r"layer 'grouped' \(ConvTranspose2d\): ratio 1.5 gives 9 channels"):
        gpd.expand(student, 1.5, input_size=(3, 8, 8))
    gm = gpd.expand(student, 2, input_size=(3, 8, 8))
    assert gm.dynamic.grouped.groups == 6


def test_the_student_reads_its_weight_back_from_the_input_axis() -> None:
    """dim 0 of a transposed conv's weight is its input axis: D divides it there, and the student
    view's weight is D's first block times r; the stem keeps dim 0, the head keeps dim 1."""
    r = 2
    gm = check_exact("unet2d", r, "tiled")
    slices = gm.student.slices
    middle = slices["up2.weight"]
    assert middle.divided_dim == 0 and set(middle.dims) == {0, 1} and middle.paper_scale == 1.0
    student_weight = gm.export_student().up2.weight
    d_weight = gm.dynamic.up2.weight.detach()
    assert torch.equal(d_weight[:16, :8] * r, student_weight)
    assert torch.equal(d_weight[16:, 8:], d_weight[:16, :8])  # tiled copies
    assert slices["up2.bias"].paper_scale == 1 / r
    head = check_exact("transposed_head", r, "tiled").student.slices["out.weight"]
    assert head.divided_dim == 0 and head.dims[1].is_identity and head.paper_scale == r
    stem = check_exact("transposed_stem", r, "tiled").student.slices["up.weight"]
    assert stem.divided_dim is None and stem.dims[0].is_identity and stem.paper_scale == 1 / r


def test_a_tiny_unet_is_no_longer_refused_through_the_distiller() -> None:
    torch.manual_seed(0)
    student = TinyUNet()
    distiller = gpd.Distiller(student, ratio=2, example_input=torch.randn(2, 3, 8, 8))
    assert distiller.network.dynamic.up2.in_channels == 32 and distiller.network.dynamic.up2.out_channels == 16


def test_the_conv_rule_hands_a_transposed_conv_to_its_rule() -> None:
    """A user's rule that calls gpd's conv rule on a transposed conv gets the transposed rule's result."""
    from gpd.expansion.torch_rules import expand_conv

    with gpd.expansion.RULES.override(nn.ConvTranspose2d, expand_conv):
        gm = check_exact("unet2d", 2, "tiled")
    assert gm.student.slices["up2.weight"].divided_dim == 0
