"""Inverse Reparameterization: D computes the student's function exactly, and expansion
refuses (with a one-line message naming the layer) what it cannot expand exactly."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import gpd
from gpd.expansion import ExpandedLayer, LayerContext, ParamSlice, replace_tensors
from helpers import (
    assert_nontrivial,
    batchnorms,
    bundled_model_names,
    create_bundled,
    randomize_batchnorm,
    rel_err,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TOL = 1e-4
BATCH = 4
_BUNDLED = bundled_model_names()


def tv_resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


def tv_mobilenet_v2() -> nn.Module:
    return torchvision.models.mobilenet_v2(num_classes=10)


def inputs(in_chans: int, seed: int, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, in_chans, 32, 32, generator=torch.Generator().manual_seed(seed))


def prepared(model: nn.Module, in_chans: int, seed: int = 0) -> nn.Module:
    """``model`` with random BatchNorm parameters/statistics, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    randomize_batchnorm(model, gen, example=inputs(in_chans, seed + 100, batch=8))
    return model.eval()


def check_equal_at_init(student: nn.Module, in_chans: int) -> None:
    """D == S and student view == S in eval and train mode; BN running stats agree after a train step."""
    student = prepared(student, in_chans)
    student_before = copy.deepcopy(student)  # the reference for the train-mode forward
    gm = gpd.expand(student, 2, input_size=(in_chans, 32, 32))
    assert gm.report.dynamic_error is not None and gm.report.dynamic_error <= TOL
    x = inputs(in_chans, 1)

    # eval mode
    gm.eval()
    with torch.no_grad():
        expected = student(x)
        assert_nontrivial(expected)
        assert rel_err(gm.forward_dynamic(x), expected) <= TOL
        assert rel_err(gm.forward_student(x), expected) <= TOL

    # train mode: one forward on copies that start from the same state (batch statistics)
    ref = copy.deepcopy(student_before).train()
    gm.train()
    with torch.no_grad():
        expected = ref(x)
        assert_nontrivial(expected)
        assert rel_err(gm.forward_dynamic(x), expected) <= TOL
        assert rel_err(gm.forward_student(x), expected) <= TOL

    # running statistics after that forward: D's first block == the student's (both views)
    ref_bns = batchnorms(ref)
    dynamic_bns = batchnorms(gm.dynamic)
    view_bns = batchnorms(gm.student.module)
    assert ref_bns and set(ref_bns) == set(dynamic_bns) == set(view_bns)
    for name, ref_bn in ref_bns.items():
        c = ref_bn.num_features
        t_bn, v_bn = dynamic_bns[name], view_bns[name]
        assert int(t_bn.num_batches_tracked) == int(v_bn.num_batches_tracked) == int(ref_bn.num_batches_tracked)
        for stat in ("running_mean", "running_var"):
            want = getattr(ref_bn, stat)
            assert rel_err(getattr(v_bn, stat), want) <= TOL, (name, stat, "student view")
            assert rel_err(getattr(t_bn, stat)[:c], want) <= TOL, (name, stat, "D first block")
            # and the other copies of D follow the same statistics (tiled)
            if t_bn.num_features == 2 * c:
                assert rel_err(getattr(t_bn, stat)[c:], want) <= TOL, (name, stat, "D copy 1")


# ---------------------------------------------------------------------------- D == S at init


@pytest.mark.parametrize("name", _BUNDLED)
def test_bundled_model_dynamic_equals_student_at_init(name: str) -> None:
    in_chans = 1 if _BUNDLED.index(name) % 2 else 3
    torch.manual_seed(0)
    check_equal_at_init(create_bundled(name, in_chans=in_chans), in_chans)


def test_torchvision_resnet18_dynamic_equals_student_at_init() -> None:
    torch.manual_seed(0)
    check_equal_at_init(tv_resnet18(), 3)


@pytest.mark.parametrize("ratio", [2, 3, 1.5])
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_ratios(arch: str, ratio: float) -> None:
    torch.manual_seed(0)
    student = prepared(tv_resnet18() if arch == "resnet18" else tv_mobilenet_v2(), 3)
    gm = gpd.expand(student, ratio, input_size=(3, 32, 32)).eval()
    x = inputs(3, 1, batch=2)
    with torch.no_grad():
        expected = student(x)
        assert_nontrivial(expected)
        assert rel_err(gm.forward_dynamic(x), expected) <= TOL
        assert rel_err(gm.forward_student(x), expected) <= TOL
    # D really is wider: every expanded conv has round(C * r) channels
    first = "conv1" if arch == "resnet18" else "features.0.0"
    assert gm.dynamic.get_submodule(first).out_channels == round(student.get_submodule(first).out_channels * ratio)
    assert gm.dynamic.get_submodule(first).in_channels == 3


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_is_about_r_squared() -> None:
    student = tv_resnet18()
    gm = gpd.expand(student, 2, input_size=(3, 32, 32))
    factor = n_params(gm.dynamic) / n_params(student)
    assert 3.5 <= factor <= 4.1, factor
    assert n_params(gm) == n_params(gm.dynamic)


def test_detects_input_and_output_layers_of_resnet18() -> None:
    gm = gpd.expand(tv_resnet18(), 2, input_size=(3, 32, 32))
    assert set(gm.report.roles.input_layers) == {"conv1"}
    assert set(gm.report.roles.output_layers) == {"fc"}
    assert gm.dynamic.conv1.in_channels == 3 and gm.dynamic.conv1.out_channels == 128
    assert gm.dynamic.fc.out_features == 10 and gm.dynamic.fc.in_features == 1024


# ---------------------------------------------------------------------------- refusals


class ConcatNet(nn.Module):
    """A conv's output is split in two halves on channels (a gated unit), then a conv.

    (Concatenation is expanded exactly since the layouts are measured, see
    tests/expansion/test_expansion_layouts.py; a split of a tiled tensor is not, and the
    interleaved layout that makes it exact is tested in tests/expansion/test_interleaved_layout.py.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv_c = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv_a(x).chunk(2, 1)
        h = self.relu(self.conv_c(a * torch.sigmoid(b) + self.conv_b(x)))
        return self.fc(self.flatten(self.pool(h)))


def test_channel_concat_is_caught_and_names_the_first_diverging_layer() -> None:
    torch.manual_seed(0)
    with pytest.raises(gpd.ExpansionError) as info:
        gpd.expand(ConcatNet(), 2, input_size=(3, 16, 16), layout="tiled")
    message = str(info.value)
    assert "\n" not in message
    assert "'conv_c'" in message, message
    for other in ("'conv_a'", "'conv_b'", "'fc'"):
        assert other not in message, message


def test_channel_concat_passes_when_verification_is_off() -> None:
    """check=False is the documented escape hatch: no error, but D differs (verified here)."""
    torch.manual_seed(0)
    student = ConcatNet().eval()
    gm = gpd.expand(student, 2, input_size=(3, 16, 16), check=False).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(gm.forward_dynamic(x), student(x)) > TOL


class Gain(nn.Module):
    """A custom leaf with a parameter and (unless a test registers one) no expansion rule."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, *([1] * (x.ndim - 2)))


class GainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gain = Gain(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.gain(self.bn1(self.conv1(x))))
        h = self.relu(self.conv2(h))
        return self.fc(self.flatten(self.pool(h)))


class SquareMix(nn.Module):
    """A custom leaf mixing channels with a (C, C) matrix: no axis is *the* channel axis."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oi,nihw->nohw", self.mix, x)


def test_custom_per_channel_layer_without_rule_is_expanded_generically() -> None:
    """Gain's one tensor has one axis of a known channel count: tiled, verified exact."""
    torch.manual_seed(0)
    student = GainNet().eval()
    gm = gpd.expand(student, 2, input_size=(3, 8, 8))
    assert gm.report.rules_used["expand_generic_leaf"] == ["gain"]
    assert torch.equal(gm.dynamic.gain.gain, student.gain.gain.repeat(2))


def test_custom_layer_with_ambiguous_tensor_is_refused_naming_it() -> None:
    student = GainNet()
    student.gain = SquareMix(8)
    with pytest.raises(gpd.ExpansionError) as info:
        gpd.expand(student, 2, input_size=(3, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "'gain.mix'" in message and "several axes" in message, message
    assert "register" in message


def expand_gain(module: Gain, ctx: LayerContext) -> ExpandedLayer:
    channel_map = ctx.out_map(module.gain.shape[0])
    new = replace_tensors(module, {"gain": channel_map.expand(module.gain, 0)})
    return ExpandedLayer(new, {"gain": ParamSlice({0: channel_map})}, output_map=channel_map)


@pytest.fixture
def gain_rule():
    from gpd.expansion import RULES

    assert RULES.get(Gain) is None
    with RULES.override(Gain, expand_gain, channelwise=True):
        yield


def test_registered_rule_for_custom_layer(gain_rule) -> None:
    torch.manual_seed(0)
    student = GainNet()
    randomize_batchnorm(student, torch.Generator().manual_seed(0))
    student.eval()
    gm = gpd.expand(student, 2, input_size=(3, 8, 8)).eval()
    assert "gain" in gm.report.rules_used["expand_gain"]
    assert gm.dynamic.gain.gain.shape == (16,)
    assert isinstance(gm.dynamic.gain, Gain)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = student(x)
        assert rel_err(gm.forward_dynamic(x), expected) <= TOL
        assert rel_err(gm.forward_student(x), expected) <= TOL
    assert torch.equal(gm.student_parameters()["gain.gain"], student.gain.gain)
    # train mode too (BatchNorm batch statistics)
    ref = copy.deepcopy(student).train()
    gm.train()
    with torch.no_grad():
        expected = ref(x)
        assert rel_err(gm.forward_dynamic(x), expected) <= TOL
        assert rel_err(gm.forward_student(x), expected) <= TOL


def test_registry_is_clean_after_rule_fixture() -> None:
    from gpd.expansion import RULES

    assert RULES.get(Gain) is None


# ---------------------------------------------------------------------------- noise and ratio


def test_symmetry_noise_breaks_bit_identity_but_keeps_student_exact() -> None:
    torch.manual_seed(0)
    student = prepared(tv_resnet18(), 3)
    exact = gpd.expand(student, 2, input_size=(3, 32, 32))
    torch.manual_seed(1)
    # a loose tolerance here: the default one is the subject of the xfail test below
    noisy = gpd.expand(student, 2, input_size=(3, 32, 32), noise_std=1e-6, tolerance=1e-2)
    assert noisy.report.dynamic_error is not None and noisy.report.dynamic_error <= 1e-2

    exact_params = dict(exact.dynamic.named_parameters())
    differing = [n for n, p in noisy.dynamic.named_parameters() if not torch.equal(p, exact_params[n])]
    assert differing, "noise_std=1e-6 left D bit-identical to the noise-free expansion"
    conv = noisy.dynamic.layer1[0].conv1.weight
    diff = (conv - exact_params["layer1.0.conv1.weight"]).abs()
    assert 0 < diff.max().item() < 1e-4
    assert diff[:64, :64].max().item() == 0.0  # the student's block has no noise

    # the student view is the original student exactly
    student_params = dict(student.named_parameters())
    for name, value in noisy.student_parameters().items():
        assert torch.equal(value, student_params[name]), name
    x = inputs(3, 1, batch=2)
    noisy.eval()
    with torch.no_grad():
        expected = student(x)
        assert torch.equal(noisy.forward_student(x), expected)
        assert 0 < rel_err(noisy.forward_dynamic(x), expected) <= 1e-2


def test_symmetry_noise_passes_verification_at_default_tolerance() -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        student = prepared(tv_resnet18(), 3, seed=seed)
        gm = gpd.expand(student, 2, input_size=(3, 32, 32), noise_std=1e-6)  # default tolerance 1e-4
        assert gm.report.dynamic_error is not None
        assert gm.report.student_error == 0.0


@pytest.mark.parametrize("ratio", [0.5, 0.99, 0, -2])
def test_ratio_below_one_is_refused(ratio: float) -> None:
    with pytest.raises(gpd.ExpansionError) as info:
        gpd.expand(tv_resnet18(), ratio, input_size=(3, 32, 32))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- errors stay ExpansionError


class ChannelSumNet(nn.Module):
    """The head reads a sum over the channel axis: D's sum is r times larger and of another width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).sum((1, 2, 3))[:, None])


def test_dynamic_teacher_that_crashes_raises_expansion_error() -> None:
    torch.manual_seed(0)
    with pytest.raises(gpd.ExpansionError) as info:
        gpd.expand(ChannelSumNet(), 2, input_size=(3, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "'fc'" in message, message


def test_wrong_input_size_raises_expansion_error() -> None:
    with pytest.raises(gpd.ExpansionError) as info:
        gpd.expand(tv_resnet18(), 2, input_size=(1, 32, 32))
    assert "\n" not in str(info.value)


def test_expand_does_not_modify_the_student() -> None:
    torch.manual_seed(0)
    student = prepared(tv_resnet18(), 3).train()
    saved = {k: v.clone() for k, v in student.state_dict().items()}
    gm = gpd.expand(student, 2, input_size=(3, 32, 32), noise_std=1e-6, tolerance=1e-2)
    assert student.training and gm.training
    for k, v in student.state_dict().items():
        assert torch.equal(v, saved[k]), k
    gm_ptrs = {p.data_ptr() for p in gm.parameters()} | {b.data_ptr() for b in gm.buffers()}
    assert not gm_ptrs & {t.data_ptr() for t in student.state_dict().values()}


# ---------------------------------------------------------------- layer-scaled branches


class Undivided(nn.Linear):
    """A Linear whose (deliberately wrong) rule tiles its weight without dividing by the input copies."""


def _undivided_rule(module: nn.Module, ctx: LayerContext) -> ExpandedLayer:
    in_map, out_map = ctx.in_map(module.in_features, -1), ctx.out_map(module.out_features, -1)
    new = replace_tensors(module, {"weight": in_map.expand(out_map.expand(module.weight, 0), 1)})
    new.in_features, new.out_features = in_map.dynamic_size, out_map.dynamic_size
    return ExpandedLayer(new, {"weight": ParamSlice({0: out_map, 1: in_map})}, output_map=out_map)


gpd.register_expansion_rule(Undivided, _undivided_rule)


class ScaledBranch(nn.Module):
    """x + gamma * branch(x) with gamma initialised to 1e-6, as ConvNeXt and CaiT do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.branch = Undivided(8, 8, bias=False)
        self.gamma = nn.Parameter(torch.full((8,), 1e-6))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(h + self.gamma * self.branch(h))


gpd.register_channel_tensors(ScaledBranch, {"gamma": 0}, multiplies=True)


def test_a_wrong_rule_under_a_tiny_layer_scale_is_refused() -> None:
    # At gamma = 1e-6 the wrong branch changes D's output by ~1e-6 only: below the
    # tolerance, but wrong once training grows gamma. Verification repeats the check
    # with every layer scale at one (ones are copies of ones in any layout).
    torch.manual_seed(0)
    with pytest.raises(gpd.ExpansionError, match="does not compute the student's function"):
        gpd.expand(ScaledBranch(), 2, example_input=torch.randn(4, 6))
    fixed = ScaledBranch()
    fixed.branch = nn.Linear(8, 8, bias=False)  # the correct rule: accepted
    gpd.expand(fixed, 2, example_input=torch.randn(4, 6))
