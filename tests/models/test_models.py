"""Tests of the model zoo: every bundled name builds and runs, sizes match the literature,
tv:/timm: names work with other input channel counts, specs round-trip, errors are one line."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gpd.errors import ModelError
from gpd.models import create_model, create_model_from_spec, list_models, register_model

BUNDLED = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_16_4", "wrn_40_1", "wrn_40_2", "wrn_40_4", "wrn_28_4", "wrn_28_10",
    "mobilenetv1",
]  # fmt: skip
TRANSFORMERS = ["rvt_tiny", "rvt_small"]  # tested in test_rvt.py
SEGMENTATION = ["seg_resnet8", "seg_resnet20", "seg_resnet8x4"]  # tested in test_segmentation_models.py

ALLOWED_LAYERS = (
    nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten,
    nn.Sequential, nn.Dropout,
)  # fmt: skip


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_has_all_bundled_names() -> None:
    assert list_models() == sorted(BUNDLED + TRANSFORMERS + SEGMENTATION)


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize(("num_classes", "in_chans"), [(10, 1), (100, 3)])
def test_bundled_builds_and_runs(name: str, num_classes: int, in_chans: int) -> None:
    kwargs = {"small_input": True} if name == "mobilenetv1" else {}
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == num_classes
    # Leaf layers are limited to the classes the expansion engine has rules for.
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, ALLOWED_LAYERS) for m in leaves), {type(m).__name__ for m in leaves}
    assert [type(s).__name__ for s in model.stages] == ["Sequential"] * len(model.stage_names)
    for stage_name, stage in zip(model.stage_names, model.stages):
        assert model.get_submodule(stage_name) is stage


def test_mobilenet_full_resolution_and_width_mult() -> None:
    model = create_model("mobilenetv1", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    half = create_model("mobilenetv1", num_classes=7, width_mult=0.5)
    assert half.fc.in_features == 512
    assert n_params(half) < n_params(model) / 3


@pytest.mark.parametrize(
    ("name", "num_classes", "low", "high"),
    [
        ("resnet20", 100, 0.26e6, 0.29e6),
        ("resnet56", 100, 0.84e6, 0.88e6),
        ("resnet8x4", 100, 1.20e6, 1.26e6),
        ("resnet32x4", 100, 7.35e6, 7.50e6),
        ("wrn_40_2", 100, 2.20e6, 2.30e6),
        ("wrn_16_2", 100, 0.68e6, 0.72e6),
        ("mobilenetv1", 1000, 4.15e6, 4.30e6),
    ],
)
def test_parameter_counts_match_literature(name: str, num_classes: int, low: float, high: float) -> None:
    assert low <= n_params(create_model(name, num_classes=num_classes)) <= high


def test_cifar_resnet_layout() -> None:
    model = create_model("resnet20", num_classes=10)
    assert model.conv1.stride == (1, 1) and model.conv1.out_channels == 16
    assert [s[0].conv1.out_channels for s in model.stages] == [16, 32, 64]
    assert len(model.layer1) == 3
    assert model.layer1[0].downsample is None
    assert isinstance(model.layer2[0].downsample[1], nn.BatchNorm2d)  # option B shortcut
    x4 = create_model("resnet32x4", num_classes=10)
    assert x4.conv1.out_channels == 32 and x4.layer1[0].downsample is not None
    assert [s[0].conv1.out_channels for s in x4.stages] == [64, 128, 256]
    # BN init: weight 1, bias 0.
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


def test_wrn_dropout_kwarg() -> None:
    model = create_model("wrn_16_2", num_classes=10, drop_rate=0.3)
    assert model.layer1[0].dropout.p == 0.3
    assert model.gpd_spec["kwargs"] == {"drop_rate": 0.3}
    with pytest.raises(ModelError):
        create_model("wrn_16_2", num_classes=10, drop_rate=1.5)


def test_torchvision_with_one_channel() -> None:
    model = create_model("tv:resnet18", num_classes=10, in_chans=1).eval()
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7)
    assert model.conv1.stride == (2, 2) and model.conv1.out_channels == 64
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_torchvision_nested_first_conv() -> None:
    # The first conv of mobilenet_v2 sits in features.0.0: it is found generically.
    model = create_model("tv:mobilenet_v2", num_classes=5, in_chans=2).eval()
    assert model.features[0][0].in_channels == 2
    with torch.no_grad():
        assert model(torch.randn(2, 2, 32, 32)).shape == (2, 5)


def test_timm_with_one_channel() -> None:
    model = create_model("timm:resnet18", num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.gpd_spec == {"name": "timm:resnet18", "num_classes": 10, "in_chans": 1, "kwargs": {}}


def test_timm_kwargs_pass_through() -> None:
    model = create_model("timm:vit_tiny_patch16_224", num_classes=3, img_size=32, depth=1)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.gpd_spec["kwargs"] == {"img_size": 32, "depth": 1}
    rebuilt = create_model_from_spec(copy.deepcopy(model.gpd_spec))
    assert _shapes(rebuilt) == _shapes(model)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet8x4", {}),
        ("wrn_16_1", {"drop_rate": 0.1}),
        ("mobilenetv1", {"width_mult": 0.5, "small_input": True}),
        ("tv:resnet18", {}),
    ],
)
def test_spec_round_trip(name: str, kwargs: dict) -> None:
    model = create_model(name, num_classes=10, in_chans=1, **kwargs)
    spec = model.gpd_spec
    assert spec == {"name": name, "num_classes": 10, "in_chans": 1, "kwargs": kwargs}
    # Plain data only, so the spec can go into a JSON file or a weights_only checkpoint.
    import json

    spec = json.loads(json.dumps(spec))
    rebuilt = create_model_from_spec(spec)
    assert _shapes(rebuilt) == _shapes(model)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.gpd_spec == model.gpd_spec


def test_spec_tuples_become_lists() -> None:
    model = create_model("timm:vit_tiny_patch16_224", num_classes=3, img_size=(32, 32), depth=1)
    assert model.gpd_spec["kwargs"] == {"img_size": [32, 32], "depth": 1}
    assert _shapes(create_model_from_spec(model.gpd_spec)) == _shapes(model)


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ModelError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_unknown_bundled_name() -> None:
    message = one_line_error(create_model, "resnet21", num_classes=10)
    assert "unknown model 'resnet21'" in message
    assert "resnet20" in message and "wrn_40_2" in message and "mobilenetv1" in message
    assert "tv:NAME" in message and "timm:NAME" in message


def test_unknown_library_names() -> None:
    assert "tv:" in one_line_error(create_model, "tv:resnet19", num_classes=10)
    assert "timm:" in one_line_error(create_model, "timm:not_a_model", num_classes=10)
    # Detection models are not classifiers.
    one_line_error(create_model, "tv:fasterrcnn_resnet50_fpn", num_classes=10)


def test_bad_arguments_are_model_errors() -> None:
    message = one_line_error(create_model, "resnet20", num_classes=10, widht=2)
    assert "widht" in message
    one_line_error(create_model, "resnet20", num_classes=0)
    one_line_error(create_model, "resnet20", num_classes=10, in_chans=0)
    one_line_error(create_model, "tv:resnet18", num_classes=10, bogus=1)
    one_line_error(create_model, "timm:resnet18", num_classes=10, bogus=1)
    one_line_error(create_model, "resnet20", num_classes=10, norm=nn.BatchNorm2d)
    one_line_error(create_model_from_spec, {"num_classes": 10})
    one_line_error(create_model_from_spec, "resnet20")


def test_pretrained_bundled_is_refused() -> None:
    message = one_line_error(create_model, "resnet20", num_classes=10, pretrained=True)
    assert "pretrained weights are not available offline; pass a checkpoint instead" in message


def test_register_model() -> None:
    with pytest.raises(ModelError):
        register_model("tv:mine")
    with pytest.raises(ModelError):

        @register_model("resnet20")
        def other(num_classes: int, in_chans: int = 3) -> nn.Module:
            return nn.Linear(in_chans, num_classes)
