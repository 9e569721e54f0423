"""The Distiller with a static teacher (KD, DKD) and the fine-tuning start."""

from __future__ import annotations

import pytest
import torch

import gpd
from gpd.config import load_config
from gpd.errors import ArgumentError
from gpd.io.student import student_payload
from gpd.models import create_model
from helpers import needs_fashion_mnist

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def small_pair(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("resnet8", 10, 1), create_model("resnet20", 10, 1)


def test_static_teacher_is_frozen_and_stays_in_eval_mode():
    student, teacher = small_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = gpd.Distiller(student, teacher, kd="kd", ratio=2, input_size=(1, 28, 28)).train()
    assert not distiller.static_teacher.training
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    distiller(x, y).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():  # BatchNorm statistics did not move
        assert torch.equal(value, before[key]), key
    assert all(id(p) not in {id(q) for q in teacher.parameters()} for p in distiller.parameters() if p.requires_grad)


@pytest.mark.parametrize("dynamic_teacher", [True, False])
@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_loss_terms(method, dynamic_teacher):
    student, teacher = small_pair()
    distiller = gpd.Distiller(student, teacher, kd=method, dynamic_teacher=dynamic_teacher, input_size=(1, 28, 28))
    losses = distiller(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)), epoch=30.0).losses
    expected = {"ce_student", "kd_student"} | ({"ce_dynamic", "kd_dynamic", "sce"} if dynamic_teacher else set())
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


def test_kd_term_matches_the_public_loss():
    student, teacher = small_pair()
    distiller = gpd.Distiller(student, teacher, kd="kd", kd_options={"temperature": 2.0}, dynamic_teacher=False)
    distiller.eval()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with torch.no_grad():
        expected = gpd.losses.kd(student(x), teacher(x), 2.0)
        assert torch.allclose(distiller(x, y).losses["kd_student"], expected)


def test_dkd_warms_up_linearly():
    student, teacher = small_pair()
    distiller = gpd.Distiller(
        student, teacher, kd="dkd", kd_options={"warmup_epochs": 10}, dynamic_teacher=False
    ).eval()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with torch.no_grad():
        full = distiller(x, y, epoch=10.0).losses["kd_student"]
        assert distiller(x, y, epoch=0.0).losses["kd_student"].item() == 0.0
        assert torch.allclose(distiller(x, y, epoch=5.0).losses["kd_student"], 0.5 * full)
        assert torch.allclose(distiller(x, y, epoch=20.0).losses["kd_student"], full)


def test_teacher_and_method_go_together():
    student, teacher = small_pair()
    with pytest.raises(ArgumentError, match="static teacher"):
        gpd.Distiller(student, teacher, kd="none")
    with pytest.raises(ArgumentError, match="static teacher"):
        gpd.Distiller(student, None, kd="dkd")
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentError, gpd.GPDError)
    with pytest.raises(gpd.ConfigError, match="kd.method"):
        load_config(None, ["kd.method=dkd"])


@needs_fashion_mnist
def test_finetuning_starts_with_d_predicting_exactly_like_the_student(tmp_path):
    from gpd.training import Trainer, prepare_run_dir

    torch.manual_seed(0)
    pretrained = create_model("resnet8", 10, 1)
    path = tmp_path / "pretrained.pt"
    torch.save(student_payload(pretrained), path)
    cfg = load_config(None, [f"student.checkpoint={path}", f"output_dir={tmp_path / 'ft'}", "gpd.branches=orepa",
                             "gpd.branch_init=identity"])  # fmt: skip
    trainer = Trainer(cfg, prepare_run_dir(cfg))
    distiller = trainer.distiller.eval()
    with torch.no_grad():
        for x, _ in trainer.loop.loaders.test:
            x = x.contiguous(memory_format=torch.channels_last)
            d_pred = distiller.dynamic_logits(x).argmax(-1)
            s_pred = distiller.student_logits(x).argmax(-1)
            assert torch.equal(d_pred, s_pred)
            assert torch.equal(s_pred, pretrained.eval()(x).argmax(-1))


@pytest.mark.parametrize("dynamic_teacher", [True, False])
def test_reviewkd_gives_student_and_d_their_own_fusion_heads(dynamic_teacher):
    student, teacher = small_pair()
    distiller = gpd.Distiller(student, teacher, kd="reviewkd", dynamic_teacher=dynamic_teacher, input_size=(1, 28, 28))
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    losses = distiller(x, y).losses
    expected = {"ce_student", "reviewkd_student"} | (
        {"ce_dynamic", "reviewkd_dynamic", "sce"} if dynamic_teacher else set()
    )
    assert set(losses) == expected
    sum(losses.values()).backward()
    heads = distiller.kd_method.heads
    assert all(p.grad is not None for p in heads.parameters())
    widths = {role: [abf.reduce[0].in_channels for abf in head.abfs] for role, head in heads.items()}
    assert widths["student"] == [16, 32, 64, 64]  # three stages and the pooled level
    if dynamic_teacher:
        assert widths["dynamic"] == [32, 64, 128, 128]  # D's own fusion head, sized to D's widths
    exported = distiller.export_student()
    assert type(exported) is type(student)
    exported.load_state_dict(create_model("resnet8", 10, 1).state_dict(), strict=True)  # no head inside


def test_reviewkd_refuses_token_stages_with_a_clear_error():
    """DeiT's stages give token sequences, not feature maps: refused when the Distiller is built."""
    from gpd.errors import ConfigError

    kwargs = dict(num_classes=10, in_chans=3, img_size=32, patch_size=8, depth=2, num_heads=2)
    student = create_model("timm:vit_tiny_patch16_224", embed_dim=48, **kwargs)
    teacher = create_model("timm:vit_tiny_patch16_224", embed_dim=96, **kwargs)
    with pytest.raises(ConfigError, match="ReviewKD fuses feature maps"):
        gpd.Distiller(student, teacher, kd="reviewkd", input_size=(3, 32, 32))


def test_one_check_of_the_distillers_arguments_for_the_api_and_the_config():
    """gpd.distill.arguments writes each rule once; the API names keywords, the config its keys."""
    student, teacher = small_pair()
    cases = [  # (Distiller keywords, config overrides, the API's message, the config's message)
        (dict(share_parameters=False, dynamic_teacher=False), ["gpd.share=false", "gpd.enabled=false"],
         "share_parameters=False separates D's parameters from the student's; it needs dynamic_teacher=True",
         "gpd.share=false separates D's parameters from the student's; it needs gpd.enabled=true"),
        (dict(ratio=0.5), ["gpd.ratio=0.5"],
         "ratio must be >= 1 (the dynamic teacher is wider), got 0.5",
         "gpd.ratio must be >= 1 (the dynamic teacher is wider), got 0.5"),
        (dict(sce_eps=2.0), ["gpd.sce_eps=2"], "sce_eps must be in [0, 1], got 2.0", "gpd.sce_eps must be in [0, 1], got 2.0"),
        (dict(teacher=teacher), ["teacher.model=resnet8"],
         "a static teacher (teacher=) goes with a KD method (kd=kd, dkd or reviewkd), got kd=none and a teacher",
         "a static teacher (teacher.model / teacher.checkpoint) goes with a KD method (kd.method=kd, dkd or "
         "reviewkd), got kd.method=none and a teacher"),
    ]  # fmt: skip
    for kwargs, overrides, api_message, config_message in cases:
        with pytest.raises(ArgumentError) as api:
            gpd.Distiller(student, input_size=(1, 28, 28), **kwargs)
        assert str(api.value) == api_message
        with pytest.raises(gpd.ConfigError) as config:
            load_config(None, overrides)
        assert str(config.value) == config_message
