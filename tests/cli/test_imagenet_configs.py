"""The bundled imagenet/ configs carry the paper's settings; what they need to build offline.

Their dry runs are in test_dry_run.py (every bundled config); here: the settings
themselves (the GPD paper), image sizes for fixed-size timm models, pretrained
weights in a dry run, and RVT stage features for ReviewKD.
"""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from gpd.config import bundled_config_names, load_config
from gpd.data import synthetic_bundle
from gpd.distill.features import as_feature_map, feature_stage_names, stage_features
from gpd.errors import ConfigError
from gpd.models import create_model
from gpd.models.registry import sized_kwargs
from gpd.training.ema import ema_decay_per_step
from gpd.training.model_setup import build_student, create_for_data
from gpd.training.static_teacher import build_static_teacher

pytestmark = pytest.mark.usefixtures("torch_single_thread")

EXPECTED = {
    "r34_r18_dkd_gpd", "r34_r18_reviewkd_gpd", "r50_mobilenetv1_dkd_gpd", "r50_mobilenetv1_reviewkd_gpd",
    "r18_scratch_gpd", "mobilenetv1_scratch_gpd", "r18_finetune_gpd", "rvt_s_rvt_ti_dkd_gpd",
    "rvt_s_rvt_ti_reviewkd_gpd", "rvt_ti_scratch_gpd", "rvt_ti_finetune_gpd", "deit_s_deit_ti_dkd_gpd",
}  # fmt: skip
IMAGENET = sorted(f"imagenet/{name}" for name in EXPECTED)
CNN = [n for n in IMAGENET if not n.split("/")[1].startswith(("rvt", "deit"))]
TRANSFORMER = [n for n in IMAGENET if n not in CNN]


def test_every_expected_config_is_bundled():
    assert {n.split("/")[1] for n in bundled_config_names() if n.startswith("imagenet/")} == EXPECTED


@pytest.mark.parametrize("name", IMAGENET)
def test_common_settings(name):
    cfg = load_config(name)
    text = (resources.files("gpd.config") / "bundled" / f"{name}.yaml").read_text()
    assert (
        text.startswith("# ") and "GPD paper" in text.split("\ndata:")[0]
    )  # the comment says where settings come from
    assert (cfg.data.name, cfg.data.root, cfg.data.image_size) == ("imagefolder", "data/imagenet", 224)
    assert (cfg.gpd.enabled, cfg.gpd.ratio, cfg.gpd.sce_weight, cfg.gpd.sce_eps) == (True, 2.0, 3.0, 0.1)
    assert (cfg.train.ema, cfg.train.ema_decay, cfg.train.grad_clip) == (True, None, 5.0)
    # the recipe's per-step EMA decay 0.99996, as a horizon in images: the same at the config's batch
    decay = ema_decay_per_step(
        decay=None, epochs=cfg.train.ema_epochs, images=cfg.train.ema_images,
        images_per_step=cfg.train.batch_size, steps_per_epoch=1,
    )  # fmt: skip
    assert decay == pytest.approx(0.99996, abs=1e-8)
    finetune = "finetune" in name
    assert cfg.gpd.branch_init == ("identity" if finetune else "default")
    assert finetune == (cfg.student.pretrained or cfg.student.checkpoint is not None)


@pytest.mark.parametrize("name", CNN)
def test_cnn_settings(name):
    t = load_config(name).train
    finetune = "finetune" in name
    assert (t.optimizer, t.momentum, t.batch_size, t.weight_decay, t.scheduler) == (
        "momentum",
        0.9,
        256,
        1e-4,
        "multistep",
    )
    assert (t.epochs, t.lr, t.decay_milestones) == ((50, 0.01, [15, 30, 45]) if finetune else (100, 0.1, [30, 60, 90]))
    assert (t.decay_rate, t.warmup_epochs, t.label_smoothing) == (0.1, 0.0, 0.0)
    assert load_config(name).gpd.branches == "orepa"
    assert t.decay_norms_and_biases  # the authors' optimizer decays every tensor, BatchNorm and biases too


@pytest.mark.parametrize("name", TRANSFORMER)
def test_deit_recipe(name):
    cfg = load_config(name)
    t, d = cfg.train, cfg.data
    finetune = "finetune" in name
    assert (t.optimizer, t.weight_decay, t.scheduler, t.warmup_epochs, t.label_smoothing) == (
        "adamw",
        0.05,
        "cosine",
        5.0,
        0.1,
    )
    assert (t.epochs, t.lr) == ((50, 5e-5) if finetune else (300, 5e-4 * t.batch_size / 512))
    assert (d.randaugment, d.random_erasing, d.mixup, d.cutmix, d.interpolation) == (
        "rand-m9-mstd0.5-inc1",
        0.25,
        0.8,
        1.0,
        "bicubic",
    )
    assert cfg.model.kwargs["drop_path_rate"] == 0.1
    assert not t.decay_norms_and_biases  # timm's rule, as the DeiT recipe has it


@pytest.mark.parametrize(
    "name, method, teacher, extra",
    [
        ("imagenet/r34_r18_dkd_gpd", "dkd", "tv:resnet34", {"beta": 0.5}),
        ("imagenet/r50_mobilenetv1_dkd_gpd", "dkd", "timm:resnet50.tv_in1k", {"beta": 2.0}),
        ("imagenet/rvt_s_rvt_ti_dkd_gpd", "dkd", "rvt_small", {"beta": 0.5}),
        ("imagenet/deit_s_deit_ti_dkd_gpd", "dkd", "timm:deit_small_patch16_224", {"beta": 0.5}),
        ("imagenet/r34_r18_reviewkd_gpd", "reviewkd", "tv:resnet34", {}),
        ("imagenet/r50_mobilenetv1_reviewkd_gpd", "reviewkd", "timm:resnet50.tv_in1k", {}),
        ("imagenet/rvt_s_rvt_ti_reviewkd_gpd", "reviewkd", "rvt_small", {}),
    ],
)
def test_kd_settings(name, method, teacher, extra):
    cfg = load_config(name)
    assert (cfg.kd.method, cfg.teacher.model) == (method, teacher)
    assert cfg.teacher.pretrained == (not teacher.startswith("rvt"))  # gpd's RVT has no published weights
    if method == "dkd":  # the authors' ImageNet DKD: T 1, alpha 1
        assert (cfg.dkd.temperature, cfg.dkd.alpha, cfg.dkd.beta) == (1.0, 1.0, extra["beta"])
    else:
        assert cfg.reviewkd.weight == 1.0


def test_mobilenetv1_is_the_papers_4_2m_parameter_student():
    assert round(sum(p.numel() for p in create_model("mobilenetv1", 1000).parameters()) / 1e6, 1) == 4.2


# ------------------------------------------------------------------ image size of fixed-size timm models


def test_sized_kwargs_passes_img_size_to_fixed_size_timm_models_only():
    assert sized_kwargs("timm:deit_tiny_patch16_224", {}, (3, 32, 32)) == {"img_size": 32}
    assert sized_kwargs("timm:deit_tiny_patch16_224", {}, (3, 224, 224)) == {}
    assert sized_kwargs("timm:deit_tiny_patch16_224", {"img_size": 64}, (3, 32, 32)) == {"img_size": 64}
    assert sized_kwargs("timm:deit_tiny_patch16_224", {}, (3, 32, 48)) == {"img_size": [32, 48]}
    assert sized_kwargs("timm:resnet50.tv_in1k", {"drop_rate": 0.1}, (3, 32, 32)) == {"drop_rate": 0.1}
    assert sized_kwargs("tv:resnet18", {}, (3, 32, 32)) == {}
    assert sized_kwargs("rvt_tiny", {}, (3, 32, 32)) == {}  # gpd's RVT resizes its position embedding itself


def test_a_deit_student_builds_for_small_images():
    data = synthetic_bundle("imagefolder", image_size=32, samples=4)
    cfg = load_config(None, ["model.student=timm:deit_tiny_patch16_224"])
    student = build_student(cfg, data).eval()
    assert student.gpd_spec["kwargs"] == {"img_size": 32}  # an exported student rebuilds at that size
    assert student(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


# ------------------------------------------------------------------ pretrained weights


def test_dry_run_replaces_pretrained_weights_with_random_ones(capsys, monkeypatch):
    import torchvision.models as tvm

    def offline(*args, **kwargs):
        assert kwargs.get("weights") is None, "a dry run must not fetch weights"
        return real(*args, **kwargs)

    real = tvm.get_model
    monkeypatch.setattr(tvm, "get_model", offline)
    data = synthetic_bundle("imagefolder", image_size=32, samples=4)
    cfg = load_config(None, ["kd.method=dkd", "teacher.model=tv:resnet18", "teacher.pretrained=true", "student.pretrained=true",
                             "model.student=tv:resnet18"])  # fmt: skip
    assert build_static_teacher(cfg, data, allow_missing_checkpoint=True) is not None
    assert build_student(cfg, data, dry_run=True) is not None
    out = capsys.readouterr().out
    assert "dry run: teacher.pretrained weights are not fetched in a dry run -> a random tv:resnet18 stands in" in out
    assert "dry run: student.pretrained weights are not fetched" in out


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_pretrained_weights_offline_are_a_one_line_error_naming_the_checkpoint_key(role, monkeypatch):
    from urllib.error import URLError

    import torchvision.models as tvm

    def offline(*args, **kwargs):
        if kwargs.get("weights") is not None:
            raise URLError("[Errno -2] Name or service not known")
        return real(*args, **kwargs)

    real = tvm.get_model
    monkeypatch.setattr(tvm, "get_model", offline)
    data = synthetic_bundle("imagefolder", image_size=32, samples=4)
    with pytest.raises(ConfigError) as err:
        create_for_data("tv:resnet18", data, {}, pretrained=True, role=role)
    message = str(err.value)
    assert "\n" not in message and "not available offline" in message
    assert f"{role}.checkpoint=FILE" in message and f"{role}.pretrained=false" in message


def test_student_pretrained_and_checkpoint_together_are_refused():
    with pytest.raises(ConfigError, match="set only one"):
        load_config(None, ["student.pretrained=true", "student.checkpoint=x.pt"])


# ------------------------------------------------------------------ RVT stages for ReviewKD


def test_rvt_stage_outputs_become_feature_maps():
    model = create_model("rvt_tiny", 10, img_size=64).eval()
    names = feature_stage_names(model)
    with torch.no_grad(), stage_features(model, names) as feats:
        model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 192, 16, 16), (2, 192, 8, 8), (2, 192, 4, 4)]
    tokens = torch.randn(2, 6, 5)
    grid = as_feature_map((tokens, (2, 3)))
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 5])  # token n sits at row n // W, column n % W
    plain = torch.randn(2, 3)
    assert as_feature_map(plain) is plain
