"""The zoo of torchvision and timm classifiers that gpd's expansion is measured on.

Small variants, small inputs, random weights (nothing is downloaded), random
BatchNorm statistics, eval mode. ``check_model`` runs the three checks of
docs/architectures.md for one model and ratio: D == student, student view ==
original, and the exported student loads strictly into a fresh instance and matches.
``scripts/architectures_report.py`` writes the table; the tests run a few. A model that
takes something else than one image tensor (a transformers text classifier takes a mapping of
``input_ids`` and ``attention_mask``) gives its inputs through ``ZooModel.example``; the
transformers zoo is :mod:`gpd.expansion.transformers_zoo`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gpd.deprecated import warn_renamed
from gpd.errors import ExpansionError
from gpd.expansion.expand import FLOAT64_TOLERANCE, expand
from gpd.expansion.verify import relative_error
from gpd.inputs import call_model
from gpd.testing import perturbed_for_verification, unit_scale_weights

NUM_CLASSES = 10


@dataclass(frozen=True)
class ZooModel:
    """One classifier of the zoo: how to build it, its family, and the input it runs on.

    ``example(seed)``, where given, makes a batch (a tensor or a mapping of keyword arguments);
    otherwise a batch is two random images of ``input_size``. ``input_label`` names the input
    in the report.
    """

    name: str
    family: str
    factory: Callable[[], nn.Module] = field(repr=False)
    input_size: tuple[int, int, int] = (3, 64, 64)
    slow: bool = False
    example: Callable[[int], Any] | None = field(default=None, repr=False)
    input_label: str = ""
    unit_scale: bool = False  # weights at unit scale first (gpd.testing.unit_scale_weights): transformers init at 0.02

    def batch(self, seed: int) -> Any:
        if self.example is not None:
            return self.example(seed)
        return torch.randn(2, *self.input_size, generator=torch.Generator().manual_seed(seed))

    @property
    def input_name(self) -> str:
        return self.input_label or str(self.input_size[1])


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, num_classes=NUM_CLASSES, **kwargs)

    return build


def _tm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    return build


def _z(name: str, family: str, size: int = 32, slow: bool = False, **kwargs) -> ZooModel:
    source, _, model = name.partition(":")
    factory = _tv(model, **kwargs) if source == "tv" else _tm(model, **kwargs)
    return ZooModel(name, family, factory, (3, size, size), slow)


ZOO: list[ZooModel] = [
    # torchvision
    _z("tv:resnet18", "ResNet"), _z("tv:resnet50", "ResNet", slow=True), _z("tv:resnext50_32x4d", "ResNeXt", slow=True),
_z("tv:mobilenet_v2", "MobileNet"), _z("tv:mobilenet_v3_small", "MobileNet"),
    _z("tv:mobilenet_v3_large", "MobileNet"), _z("tv:efficientnet_b0", "EfficientNet"), _z("tv:efficientnet_v2_s", "EfficientNet", slow=True),
    _z("tv:mnasnet0_5", "MNASNet"), _z("tv:regnet_x_400mf", "RegNet"), _z("tv:regnet_y_400mf", "RegNet"),
    _z("tv:vgg11_bn", "VGG", 32, slow=True), _z("tv:alexnet", "AlexNet", 64), _z("tv:densenet121", "DenseNet"),
    _z("tv:googlenet", "GoogLeNet", init_weights=True, aux_logits=False), _z("tv:inception_v3", "Inception-v3", 80, init_weights=True, aux_logits=False),
    _z("tv:squeezenet1_0", "SqueezeNet"), _z("tv:squeezenet1_1", "SqueezeNet"), _z("tv:shufflenet_v2_x0_5", "ShuffleNet"),
    _z("tv:convnext_tiny", "ConvNeXt (tv)", slow=True), _z("tv:vit_b_16", "ViT (tv)", 32, slow=True, image_size=32),
    _z("tv:swin_t", "Swin", 64, slow=True), _z("timm:maxvit_pico_rw_256", "MaxViT", 64, img_size=64),
    # timm: CNNs
    _z("timm:resnet18", "ResNet"), _z("timm:resnet18d", "ResNet"), _z("timm:resnet26", "ResNet"), _z("timm:resnet50", "ResNet", slow=True),
    _z("timm:seresnext26d_32x4d", "ResNeXt"), _z("timm:resnext26ts", "ResNeXt"), _z("timm:resnetv2_50", "ResNet", slow=True),
    _z("timm:res2net50_14w_8s", "Res2Net", slow=True), _z("timm:resnest14d", "ResNeSt"), _z("timm:skresnet18", "SK-ResNet"),
    _z("timm:regnetx_002", "RegNet"), _z("timm:regnety_002", "RegNet"), _z("timm:regnetz_b16", "RegNet"),
    _z("timm:efficientnet_b0", "EfficientNet"), _z("timm:efficientnet_lite0", "EfficientNet"), _z("timm:tf_efficientnetv2_b0", "EfficientNet"),
    _z("timm:mobilenetv1_100", "MobileNet"), _z("timm:mobilenetv2_050", "MobileNet"), _z("timm:mobilenetv3_small_050", "MobileNet"),
    _z("timm:mobilenetv3_large_100", "MobileNet"), _z("timm:mobilenetv4_conv_small", "MobileNet"), _z("timm:mixnet_s", "MixNet"),
    _z("timm:mnasnet_small", "MNASNet"), _z("timm:tinynet_e", "EfficientNet"), _z("timm:lcnet_050", "LCNet"),
    _z("timm:hardcorenas_a", "MobileNet"), _z("timm:fbnetc_100", "FBNet"), _z("timm:spnasnet_100", "MNASNet"),
    _z("timm:densenet121", "DenseNet"), _z("timm:inception_v3", "Inception-v3", 80), _z("timm:dla34", "DLA"), _z("timm:dla46_c", "DLA"),
    _z("timm:dla60x_c", "DLA"), _z("timm:vovnet39a", "VoVNet", slow=True), _z("timm:ese_vovnet19b_dw", "VoVNet"),
    _z("timm:ghostnet_050", "GhostNet"), _z("timm:ghostnetv2_100", "GhostNet", 64), _z("timm:cspdarknet53", "CSPDarkNet/CSPResNet", slow=True),
    _z("timm:cspresnet50", "CSPDarkNet/CSPResNet"), _z("timm:cs3darknet_s", "CSPDarkNet/CSPResNet"), _z("timm:darknet53", "DarkNet", slow=True),
    _z("timm:dpn48b", "DPN"), _z("timm:dpn68", "DPN"), _z("timm:selecsls42b", "SelecSLS"), _z("timm:rexnet_100", "ReXNet"),
    _z("timm:rexnetr_100", "ReXNet"), _z("timm:nf_resnet26", "NF-ResNet"), _z("timm:nf_regnet_b0", "NF-ResNet"),
    _z("timm:dm_nfnet_f0", "NF-ResNet", slow=True), _z("timm:repvgg_a0", "RepVGG"), _z("timm:mobileone_s0", "MobileOne"),
    _z("timm:hrnet_w18_small", "HRNet", slow=True), _z("timm:gernet_s", "GENet"), _z("timm:xception41", "Xception", 96, slow=True),
    _z("timm:hgnetv2_b0", "HGNet"), _z("timm:repghostnet_050", "GhostNet"), _z("timm:convnext_atto", "ConvNeXt"),
    _z("timm:convnextv2_atto", "ConvNeXt-V2"), _z("timm:efficientvit_b0", "EfficientViT"), _z("timm:efficientvit_m0", "EfficientViT"),
    # timm: transformers, MLPs, hybrids
    _z("timm:vit_tiny_patch16_224", "ViT", 32, img_size=32), _z("timm:vit_small_patch16_224", "ViT", 32, img_size=32),
    _z("timm:deit_tiny_patch16_224", "DeiT", 32, img_size=32), _z("timm:deit_tiny_distilled_patch16_224", "DeiT", 32, img_size=32),
    _z("timm:vit_tiny_r_s16_p8_224", "ViT", 64, img_size=64), _z("timm:cait_xxs24_224", "CaiT", 32, img_size=32),
    _z("timm:convit_tiny", "ConViT", 32, img_size=32), _z("timm:beit_base_patch16_224", "BEiT", 32, slow=True, img_size=32),
    _z("timm:eva02_tiny_patch14_224", "EVA-02", 28, img_size=28), _z("timm:pit_ti_224", "PiT", 64, img_size=64),
    _z("timm:pit_xs_distilled_224", "PiT", 64, img_size=64), _z("timm:xcit_nano_12_p16_224", "XCiT", 32, img_size=32),
    _z("timm:swin_tiny_patch4_window7_224", "Swin", 64, img_size=64, window_size=2), _z("timm:levit_128s", "LeViT", 64, img_size=64),
    _z("timm:levit_conv_128s", "LeViT", 64, img_size=64), _z("timm:efficientformer_l1", "EfficientFormer", 224),
    _z("timm:efficientformerv2_s0", "EfficientFormer", 64, img_size=64), _z("timm:pvt_v2_b0", "PVT-v2", 64),
    _z("timm:twins_pcpvt_small", "Twins", 64, slow=True), _z("timm:twins_svt_small", "Twins", 64, slow=True),
    _z("timm:mixer_s32_224", "MLP-Mixer", 64, img_size=64), _z("timm:resmlp_12_224", "ResMLP", 32, img_size=32),
    _z("timm:poolformer_s12", "metaformer"), _z("timm:poolformerv2_s12", "metaformer"), _z("timm:convformer_s18", "metaformer", slow=True),
    _z("timm:caformer_s18", "metaformer", slow=True), _z("timm:edgenext_xx_small", "EdgeNeXt"), _z("timm:edgenext_base", "EdgeNeXt", slow=True), _z("timm:mobilevit_xxs", "MobileViT"),
    _z("timm:mobilevitv2_050", "MobileViT"), _z("timm:coat_lite_tiny", "CoaT", 64, img_size=64), _z("timm:tiny_vit_5m_224", "TinyViT", 64),
    _z("timm:fastvit_t8", "FastViT"), _z("timm:inception_next_tiny", "InceptionNeXt", slow=True), _z("timm:visformer_tiny", "Visformer", 64, img_size=64),
]  # fmt: skip


@dataclass
class ZooResult:
    """One model at one ratio: exact (with its errors) or refused (with the reason)."""

    name: str
    ratio: float
    exact: bool
    reason: str = ""
    dynamic_error: float = float("nan")
    student_error: float = float("nan")
    export_error: float = float("nan")
    seconds: float = 0.0
    student_params: int = 0
    dynamic_params: int = 0
    float64: bool = False  # the errors are of a float64 expansion (float32 rounding exceeded the tolerance)
    layout: str = ""  # of D's copies, as gpd.expand chose it: "tiled" or "interleaved"

    @property
    def teacher_error(self) -> float:
        """Deprecated: the old name of ``dynamic_error`` (D's relative error)."""
        warn_renamed("ZooResult.teacher_error", "ZooResult.dynamic_error")
        return self.dynamic_error

    @property
    def teacher_params(self) -> int:
        """Deprecated: the old name of ``dynamic_params`` (D's parameter count)."""
        warn_renamed("ZooResult.teacher_params", "ZooResult.dynamic_params")
        return self.dynamic_params


def _rel(a: Any, b: Any) -> float:
    """max |a - b| / max |b| over every tensor of two outputs (a ModelOutput's included)."""
    return relative_error(a, b)


def _double(x: Any) -> Any:
    """A batch with its floating tensors in float64 (token ids and masks stay integers)."""
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {key: _double(value) for key, value in x.items()}
    return x


FLOAT64_EXACT = FLOAT64_TOLERANCE  # gpd.expand's own float64 bound: deep random nets amplify float64 rounding to ~1e-8


def _float64_errors(spec: ZooModel, student: nn.Module, ratio: float, x: torch.Tensor) -> tuple[float, float, float]:
    """The three errors of a float64 expansion of a float64 copy of ``student``."""
    import copy

    student64 = copy.deepcopy(student).double().eval()
    x64 = _double(x)
    model = expand(student64, ratio, example_input=_double(spec.batch(0))).eval()
    with torch.no_grad():
        expected = call_model(student64, x64)
        fresh = spec.factory().double()
        fresh.load_state_dict(model.export_student().state_dict(), strict=True)
        return (_rel(call_model(model.forward_dynamic, x64), expected),
                _rel(call_model(model.forward_student, x64), expected),
                _rel(call_model(fresh.eval(), x64), expected))  # fmt: skip


def check_model(spec: ZooModel, ratio: float, tolerance: float = 1e-4) -> ZooResult:
    """Expand one zoo model and run the three checks on a fresh input (not the expansion's)."""
    torch.manual_seed(0)
    example = spec.batch(0) if spec.example is not None else None
    student = spec.factory()
    if spec.unit_scale:
        unit_scale_weights(student)
    student = perturbed_for_verification(student, spec.input_size, example=example)
    started = time.perf_counter()
    try:
        if example is None:
            model = expand(student, ratio, input_size=spec.input_size)
        else:
            model = expand(student, ratio, example_input=example)
    except ExpansionError as err:
        return ZooResult(spec.name, ratio, False, reason=str(err), seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    x = spec.batch(7)
    model.eval()
    with torch.no_grad():
        expected = call_model(student, x)
        dynamic, view = call_model(model.forward_dynamic, x), call_model(model.forward_student, x)
        fresh = spec.factory()
        fresh.load_state_dict(model.export_student().state_dict(), strict=True)
        exported = call_model(fresh.eval(), x)
    errors = (_rel(dynamic, expected), _rel(view, expected), _rel(exported, expected))
    float64 = max(errors) > tolerance
    if float64:  # float32 rounding of a deep net: settle it by expanding a float64 copy, as exactness is a float64 fact
        try:
            errors = _float64_errors(spec, student, ratio, x)
        except ExpansionError as err:
            return ZooResult(
                spec.name, ratio, False, reason=f"float32 errors {errors}; in float64: {err}", seconds=seconds
            )
    exact = max(errors) <= (FLOAT64_EXACT if float64 else tolerance)
    return ZooResult(
        spec.name, ratio, exact, reason="" if exact else f"differs on a fresh input: errors {errors}", float64=float64,
        dynamic_error=errors[0], student_error=errors[1], export_error=errors[2], seconds=seconds,
        student_params=sum(p.numel() for p in student.parameters()),
        dynamic_params=sum(p.numel() for p in model.parameters()), layout=model.report.layout,
    )  # fmt: skip
