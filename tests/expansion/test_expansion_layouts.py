"""Measured channel layouts, generic per-channel tensors and per-head tables.

Every model is checked numerically in float64 against the unexpanded student, the
student view and the export; the sharing tests take one SGD step on D and compare the
student's step, layer by layer, with the factors of docs/method.md ("Per-layer steps"),
derived here by kind, not read from the library.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import gpd
from gpd.testing import perturbed_for_verification

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_exact(
    student: nn.Module, size: tuple[int, ...], ratio: float = 2, fresh: nn.Module | None = None
) -> gpd.GPDModel:
    student = perturbed_for_verification(student, size).double()
    gm = gpd.expand(student, ratio, example_input=torch.randn(2, *size, dtype=torch.float64)).eval()
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        expected = student(x)
        assert rel(gm.forward_dynamic(x), expected) < 1e-10
        assert rel(gm.forward_student(x), expected) < 1e-10
        if fresh is not None:
            fresh.double().load_state_dict(gm.export_student().state_dict(), strict=True)
            assert rel(fresh.eval()(x), expected) < 1e-10
    return gm


class CatNet(nn.Module):
    """Two branches concatenated on channels, a BatchNorm and a conv reading the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.bn, self.c = nn.BatchNorm2d(10), nn.Conv2d(10, 8, 3, padding=1)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.fc = nn.Linear(18, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(torch.cat([self.c(h), self.dw(h)], 1).mean((2, 3)))


class ShuffleNet(nn.Module):
    """A channel shuffle (view, transpose, reshape) between two convs: a permutation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        n, c, hh, ww = h.shape
        h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        return self.fc(self.b(h).mean((2, 3)))


class TokenMixer(nn.Module):
    """An MLP over tokens (MLP-Mixer): its Linear reads an unexpanded axis, so it stays as is."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.tokens, self.fc = nn.Conv2d(3, 8, 4, 4), nn.Linear(4, 4), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2)  # (N, C, L)
        h = h + self.tokens(h)
        return self.fc(h.mean(2))


def test_concat_layout_is_measured_and_consumers_are_permuted() -> None:
    gm = check_exact(CatNet(), (3, 8, 8), fresh=CatNet())
    bn_map = gm.student.slices["bn.weight"].dims[0]
    assert bn_map.source.tolist() == [0, 1, 2, 3] * 2 + [4, 5, 6, 7, 8, 9] * 2  # [a, a, b, b]
    assert bn_map.student_index.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13]
    assert gm.dynamic.dw.groups == 20  # a depthwise conv keeps the permuted layout


@pytest.mark.parametrize("ratio", [2, 3, 1.5])
def test_concat_at_every_ratio(ratio: float) -> None:
    check_exact(CatNet(), (3, 8, 8), ratio)


def test_channel_shuffle_is_a_permutation() -> None:
    check_exact(ShuffleNet(), (3, 6, 6), fresh=ShuffleNet())


def test_token_mixing_linear_is_kept() -> None:
    gm = check_exact(TokenMixer(), (3, 8, 8), fresh=TokenMixer())
    assert gm.dynamic.tokens.weight.shape == (4, 4)
    assert gm.dynamic.fc.in_features == 16


class LayerScaled(nn.Module):
    """A block holding a layer scale (C, 1, 1), a position bias (C,) and a scalar gain of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.layer_scale = nn.Parameter(torch.rand(6, 1, 1) + 0.5)
        self.pos_shift = nn.Parameter(torch.randn(6))
        self.gain = nn.Parameter(torch.tensor([1.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gain * self.layer_scale * self.conv(x) + self.pos_shift.view(1, -1, 1, 1)


class LayerScaleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.fc = nn.Conv2d(3, 6, 3), LayerScaled(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_generic_per_channel_tensors_are_tiled_and_scalars_kept() -> None:
    gm = check_exact(LayerScaleNet(), (3, 8, 8), fresh=LayerScaleNet())
    assert gm.dynamic.block.layer_scale.shape == (12, 1, 1)
    assert gm.dynamic.block.gain.shape == (1,)
    slices = gm.student.slices
    assert slices["block.layer_scale"].paper_scale == 1.0  # multiplies activations
    assert slices["block.pos_shift"].paper_scale == 0.5  # added to them: the paper's layout holds it / r


class Odd(nn.Conv2d):
    """A conv subclass whose (test) rule has a bug."""


def test_a_rules_own_failure_is_a_bug_that_keeps_its_traceback() -> None:
    """A rule refuses with ExpansionError (``ctx.error``); any other exception it raises is its bug
    and propagates unchanged (tests/expansion/test_expansion_refusals.py)."""
    from gpd.expansion import RULES

    def buggy(module: nn.Module, ctx) -> None:
        raise KeyError("oops")

    with RULES.override(Odd, buggy):
        student = nn.Sequential(nn.Conv2d(3, 4, 3), Odd(4, 4, 1), nn.Flatten(), nn.LazyLinear(2))
        student(torch.randn(1, 3, 8, 8))
        with pytest.raises(KeyError, match="oops") as info:
            gpd.expand(student, 2, input_size=(3, 8, 8))
    assert RULES.get(Odd) is None
    assert info.traceback[-1].name == "buggy"


def test_nf_resnet_standardised_conv_is_exact() -> None:
    def make() -> nn.Module:
        return timm.create_model("nf_resnet26", num_classes=4, channels=(16, 32, 32, 32), stem_chs=16)

    torch.manual_seed(0)
    gm = check_exact(make(), (3, 32, 32), fresh=make())
    assert "expand_scaled_std_conv" in gm.report.rules_used
    with pytest.raises(gpd.ExpansionError, match="unevenly"):
        gpd.expand(perturbed_for_verification(make(), (3, 32, 32)), 1.5, input_size=(3, 32, 32))


def tiny_swin() -> nn.Module:
    return timm.create_model("swin_tiny_patch4_window7_224", num_classes=5, img_size=32, window_size=2,
                             embed_dim=16, depths=(2, 2), num_heads=(2, 4))  # fmt: skip


def tiny_densenet() -> nn.Module:
    return torchvision.models.DenseNet(
        growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5
    )


def test_swin_relative_position_tables_are_tiled_per_head() -> None:
    torch.manual_seed(0)
    gm = check_exact(tiny_swin(), (3, 32, 32), fresh=tiny_swin())
    attn = gm.dynamic.layers[0].blocks[0].attn
    assert attn.num_heads == 4 and attn.relative_position_bias_table.shape[1] == 4


def test_torchvision_swin_and_vit_attention() -> None:
    torch.manual_seed(0)

    def swin() -> nn.Module:
        from torchvision.models.swin_transformer import SwinTransformer

        return SwinTransformer([4, 4], 16, [2, 2], [2, 4], [2, 2], num_classes=5)

    def vit() -> nn.Module:
        return torchvision.models.VisionTransformer(16, 16, 2, 2, 16, 32, num_classes=5)

    check_exact(swin(), (3, 32, 32), fresh=swin())
    check_exact(vit(), (3, 16, 16), fresh=vit())


def step_factor(name: str, module: nn.Module, stem: set[str], head: set[str], r: int) -> float:
    """The paper's student step relative to plain SGD (docs/method.md): r² on ungrouped conv/linear
    weights and biases, except the head's (1); 1 on norms, depthwise convs and per-head tables."""
    owner = name.rpartition(".")[0]
    layer = module.get_submodule(owner)
    ungrouped = isinstance(layer, nn.Linear) or (isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1)
    if not ungrouped:
        return 1.0
    return 1.0 if owner in head else float(r * r)


@pytest.mark.parametrize("arch", ["densenet", "swin"])
def test_sgd_step_on_d_moves_the_student_as_the_paper_predicts(arch: str) -> None:
    torch.manual_seed(0)
    size = (3, 32, 32)
    student = perturbed_for_verification(tiny_densenet() if arch == "densenet" else tiny_swin(), size).double()
    gm = gpd.expand(student, 2, example_input=torch.randn(2, *size, dtype=torch.float64)).eval()
    x = torch.randn(4, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    plain = copy.deepcopy(student).eval()
    F.cross_entropy(plain(x), y).backward()
    before = {n: v.detach().clone() for n, v in gm.student_parameters().items()}
    lr = 1e-3
    optimizer = torch.optim.SGD(gm.parameters(), lr=lr)
    F.cross_entropy(gm.forward_student(x), y).backward()
    optimizer.step()
    after = {n: v.detach().clone() for n, v in gm.student_parameters().items()}
    roles = gm.report.roles
    for name, param in plain.named_parameters():
        expected = -lr * step_factor(name, plain, set(roles.input_layers), set(roles.output_layers), 2) * param.grad
        assert rel(after[name] - before[name], expected) < 1e-8, name
    # the student view is the student made of D's slices (read by hand with each slice's map)
    dynamic = dict(gm.dynamic.named_parameters())
    fresh = copy.deepcopy(student)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            s = gm.student.slices[name]
            value = dynamic[name].detach()
            for dim, channel_map in s.dims.items():
                value = value.index_select(dim, channel_map.student_index)
            if s.divided_dim is not None:
                value = value * s.dims[s.divided_dim].uniform_count
            param.copy_(value)
    with torch.no_grad():
        assert rel(gm.forward_student(x), fresh.eval()(x)) < 1e-10
        assert rel(fresh(x), student(x)) > 1e-6  # the step changed the function
