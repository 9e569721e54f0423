"""Segmentation models expand exactly: the bundled seg_resnet students, torchvision's FCN, DeepLabV3 and
LRASPP (dict outputs ``out`` and ``aux``) and timm backbones under an FPN head (``timm-seg:NAME``).

Each is built through the model registry, perturbed (gpd.testing.perturbed_for_verification) and run
in float64: at r = 2, D and the student view equal the unexpanded model tensor by tensor (every key of
a dict output), the export loads strictly into a fresh instance of the original class and computes the
same. A per-pixel cross-entropy step through the student and D forwards gives finite gradients.
Their layers are convs, BatchNorms, transposed convs and Linear layers (torchvision's SE blocks
use convs): kinds whose per-layer steps tests/sharing already checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import gpd
from gpd.errors import ModelError
from gpd.expansion.verify import output_tensors
from gpd.models import check_model_name, create_model, create_model_from_spec, list_models
from gpd.models.import_path import is_import_path
from gpd.models.seg_resnet import SegResNet
from gpd.models.timm_fpn import TimmFPNSegmenter
from gpd.testing import perturbed_for_verification
from helpers import assert_nontrivial, rel_err

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CLASSES = 3
IGNORE = 255
D_TOL = 1e-8  # float64; efficientnet_b0's D rounds to ~2e-9 (its classifier does too), the others to ~1e-13
VIEW_TOL = 1e-12

# (registry name, kwargs, input size (C, H, W))
Case = tuple[str, dict[str, Any], tuple[int, int, int]]
SLOW = {"tv:fcn_resnet50"}
CASES: dict[str, Case] = {
    "seg_resnet8": ("seg_resnet8", {}, (1, 32, 32)),
    "seg_resnet20": ("seg_resnet20", {}, (3, 32, 32)),
    "seg_resnet8x4": ("seg_resnet8x4", {}, (3, 32, 32)),
    "lraspp": ("tv:lraspp_mobilenet_v3_large", {}, (3, 64, 64)),
    "deeplabv3": ("tv:deeplabv3_mobilenet_v3_large", {}, (3, 64, 64)),
    "deeplabv3_aux": ("tv:deeplabv3_mobilenet_v3_large", {"aux_loss": True}, (3, 64, 64)),
    "fcn": ("tv:fcn_resnet50", {}, (3, 64, 64)),
    "fcn_aux": ("tv:fcn_resnet50", {"aux_loss": True}, (3, 64, 64)),
    "timm_resnet18": ("timm-seg:resnet18", {"fpn_channels": 16}, (3, 64, 64)),
    "timm_mobilenetv3": ("timm-seg:mobilenetv3_small_050", {"fpn_channels": 16}, (3, 64, 64)),
    "timm_convnext": ("timm-seg:convnext_atto", {"fpn_channels": 16}, (3, 64, 64)),
    "timm_efficientnet": ("timm-seg:efficientnet_b0", {"fpn_channels": 16}, (3, 64, 64)),
}
PARAMS = [pytest.param(key, id=key, marks=[pytest.mark.slow] if CASES[key][0] in SLOW else []) for key in CASES]


def build(key: str) -> nn.Module:
    name, kwargs, size = CASES[key]
    return create_model(name, num_classes=CLASSES, in_chans=size[0], **kwargs)


def batch(size: tuple[int, ...], n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, *size, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def fresh_original(key: str) -> nn.Module:
    """A new instance of the original class, built without gpd's registry for torchvision models."""
    name, kwargs, size = CASES[key]
    if name.startswith("tv:"):
        return torchvision.models.get_model(
            name[3:], weights=None, weights_backbone=None, num_classes=CLASSES, **kwargs
        )
    return create_model(name, num_classes=CLASSES, in_chans=size[0], **kwargs)


def assert_same_outputs(actual: Any, expected: Any, tol: float) -> None:
    """Compare two outputs tensor by tensor, a dict's key by key."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected)
        for key in expected:
            assert rel_err(actual[key], expected[key]) <= tol, key
        return
    assert rel_err(actual, expected) <= tol


@pytest.mark.parametrize("key", PARAMS)
def test_segmentation_model_expands_exactly_at_r2(key: str) -> None:
    size = CASES[key][2]
    torch.manual_seed(0)
    student = perturbed_for_verification(build(key), size).double()
    gm = gpd.expand(student, 2, example_input=batch(size, 2, 1)).eval()
    x = batch(size, 3, 2)
    with torch.no_grad():
        expected = student(x)
        tensors = output_tensors(expected)
        keys = list(expected) if isinstance(expected, dict) else None
        assert keys in (None, ["out"], ["out", "aux"])
        assert ("aux" in (keys or [])) == bool(CASES[key][1].get("aux_loss"))
        for tensor in tensors:
            assert tensor.shape == (3, CLASSES, *size[1:])  # per-pixel logits at the input size
            assert_nontrivial(tensor)
        assert_same_outputs(gm.forward_dynamic(x), expected, D_TOL)
        assert_same_outputs(gm.forward_student(x), expected, VIEW_TOL)
        exported = gm.export_student()
        fresh = fresh_original(key).double().eval()
        assert type(exported) is type(fresh)
        fresh.load_state_dict(exported.state_dict(), strict=True)
        assert_same_outputs(fresh(x), expected, VIEW_TOL)


@pytest.mark.parametrize("key", PARAMS)
def test_per_pixel_loss_step_through_student_and_dynamic_gives_finite_gradients(key: str) -> None:
    size = CASES[key][2]
    torch.manual_seed(0)
    gm = gpd.expand(build(key), 2, input_size=size).train()
    x = batch(size, 2, 3, dtype=torch.float32)
    mask = torch.randint(0, CLASSES, (2, *size[1:]), generator=torch.Generator().manual_seed(4))
    mask[:, :4] = IGNORE  # some ignored pixels
    for forward in (gm.forward_student, gm.forward_dynamic):
        gm.zero_grad(set_to_none=True)
        outputs = output_tensors(forward(x))
        loss = sum(F.cross_entropy(out, mask, ignore_index=IGNORE) for out in outputs)
        assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in gm.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_bundled_segmentation_models_are_registered_and_use_expandable_layers() -> None:
    assert {"seg_resnet8", "seg_resnet20", "seg_resnet8x4"} <= set(list_models())
    allowed = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.Sequential)
    model = create_model("seg_resnet20", num_classes=11, in_chans=1)
    assert isinstance(model, SegResNet)
    leaves = {type(m) for m in model.modules() if not list(m.children())}
    assert all(issubclass(t, allowed) for t in leaves), leaves
    assert model.stage_names == ("layer1", "layer2", "layer3") and model.stages == [
        model.layer1,
        model.layer2,
        model.layer3,
    ]
    student, teacher = (create_model(n, num_classes=11) for n in ("seg_resnet8", "seg_resnet20"))
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2


@pytest.mark.parametrize("hw", [(64, 64), (30, 45), (17, 17)])
def test_seg_resnet_outputs_logits_at_any_input_size(hw: tuple[int, int]) -> None:
    model = create_model("seg_resnet8", num_classes=5, in_chans=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *hw)).shape == (2, 5, *hw)


def test_seg_resnet_expands_exactly_at_an_odd_input_size() -> None:
    size = (3, 30, 45)
    student = perturbed_for_verification(create_model("seg_resnet8", num_classes=CLASSES), size).double()
    gm = gpd.expand(student, 2, example_input=batch(size, 2, 1)).eval()
    x = batch(size, 2, 2)
    with torch.no_grad():
        assert rel_err(gm.forward_dynamic(x), student(x)) <= D_TOL
        assert rel_err(gm.forward_student(x), student(x)) <= VIEW_TOL


@pytest.mark.parametrize("name", ["tv:lraspp_mobilenet_v3_large", "timm-seg:resnet18", "seg_resnet8"])
def test_segmentation_names_check_build_with_one_input_channel_and_rebuild_from_spec(name: str) -> None:
    check_model_name(name)
    assert not is_import_path(name)
    model = create_model(name, num_classes=4, in_chans=1)
    rebuilt = create_model_from_spec(model.gpd_spec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = output_tensors(model.eval()(x))
        assert [t.shape for t in out] == [(2, 4, 32, 32)]
        assert all(torch.equal(a, b) for a, b in zip(out, output_tensors(rebuilt.eval()(x))))


def test_torchvision_segmentation_builds_without_a_pretrained_backbone() -> None:
    # torchvision's default weights_backbone for FCN and DeepLabV3 is a pretrained ResNet; the
    # registry asks for none, so nothing is downloaded and two builds differ only by the RNG.
    torch.manual_seed(0)
    ours = create_model("tv:fcn_resnet50", num_classes=CLASSES)
    torch.manual_seed(0)
    plain = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=CLASSES)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values()))
    assert ours.aux_classifier is None


def test_timm_fpn_segmenter_options() -> None:
    model = TimmFPNSegmenter("resnet18", num_classes=2, fpn_channels=8, out_indices=[1, 2, 3])
    assert len(model.laterals) == 3 and model.classifier.out_channels == 2
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 40)).shape == (1, 2, 40, 40)


BAD: list[tuple[Callable[[], object], str]] = [
    (lambda: check_model_name("tv:fcn_resnet5"), r"unknown torchvision .*'tv:fcn_resnet5' \(did you mean 'tv:fcn_resnet50'\?\)"),
    (lambda: check_model_name("timm-seg:resnt18"), r"unknown timm backbone 'timm-seg:resnt18' \(did you mean"),
    (lambda: create_model("timm-seg:resnet18", 3, fpn_width=8), r"cannot build 'timm-seg:resnet18': .*fpn_width"),
    (lambda: create_model("tv:lraspp_mobilenet_v3_large", 3, aux_loss=True), r"cannot build 'tv:lraspp_mobilenet"),
    (lambda: create_model("seg_resnet8", 3, depth=20), r"model 'seg_resnet8' got unknown argument\(s\) depth"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "pattern"), BAD)
def test_bad_segmentation_model_names_and_arguments_are_one_line_errors(
    call: Callable[[], object], pattern: str
) -> None:
    with pytest.raises(ModelError, match=pattern) as info:
        call()
    assert "\n" not in str(info.value)


def test_pretrained_asks_for_the_backbone_only_and_offline_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    import timm
    import torchvision.models as tvm

    asked: list[dict[str, Any]] = []

    def offline_tv(*args: Any, **kwargs: Any) -> nn.Module:
        asked.append(kwargs)
        raise URLError("[Errno -2] Name or service not known")

    def offline_timm(*args: Any, **kwargs: Any) -> nn.Module:
        asked.append(kwargs)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvm, "get_model", offline_tv)
    monkeypatch.setattr(timm, "create_model", offline_timm)
    for name in ("tv:deeplabv3_mobilenet_v3_large", "timm-seg:resnet18"):
        with pytest.raises(ModelError, match="pretrained weights are not available offline") as info:
            create_model(name, num_classes=CLASSES, pretrained=True)
        assert "\n" not in str(info.value) and name in str(info.value)
    tv_kwargs, timm_kwargs = asked
    assert tv_kwargs["weights"] is None and tv_kwargs["weights_backbone"] == "DEFAULT"
    assert tv_kwargs["num_classes"] == CLASSES
    assert timm_kwargs["pretrained"] is True and timm_kwargs["features_only"] is True
