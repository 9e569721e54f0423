"""ReviewKD as the ReviewKD paper's code and mdistiller run it, and mdistiller's CIFAR-100 loss weights.

Pre-activation stage taps (checked against independent hooks), the pooled 1x1 level, the
ABF initialisation, a head-sizing probe that changes no buffer, the per-method CE weight
and ReviewKD's linear warm-up, and the bundled CIFAR-100 / ImageNet settings.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gpd
from gpd.config import load_config
from gpd.distill.features import stage_features
from gpd.distill.method import RoleNetwork
from gpd.distill.probe import unchanged_state
from gpd.distill.reviewkd import ReviewKD
from gpd.losses import ABF
from gpd.models import create_model


def _trained_bn(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 1) -> torch.nn.Module:
    """Give BatchNorm non-default running statistics (a few train-mode passes), then eval mode."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, *shape) * 2 + 0.5)
    return model.eval()


# ------------------------------------------------------------------ taps


def test_cifar_resnet_taps_are_the_values_before_each_stages_last_relu():
    torch.manual_seed(0)
    model = _trained_bn(create_model("resnet8", 10, 3), (3, 32, 32))
    names = ["layer1", "layer2", "layer3"]
    before_relu, stage_out = {}, {}
    hooks = [
        getattr(model, n)[-1].relu2.register_forward_pre_hook(
            lambda mod, args, n=n: before_relu.__setitem__(n, args[0].clone())
        )
        for n in names
    ]
    hooks += [
        getattr(model, n).register_forward_hook(lambda mod, args, out, n=n: stage_out.__setitem__(n, out.clone()))
        for n in names
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), stage_features(model, names, preact=True) as pre:
        model(x)
    with torch.no_grad(), stage_features(model, names, preact=False) as post:
        model(x)
    for hook in hooks:
        hook.remove()
    for k, name in enumerate(names):
        assert torch.equal(pre[k], before_relu[name])
        assert (pre[k] < 0).any()  # the negative part a post-ReLU map has lost
        assert torch.equal(post[k], stage_out[name]) and torch.equal(F.relu(pre[k]), post[k])


def test_torchvision_resnet_taps_with_an_in_place_relu():
    """torchvision's block calls one in-place ReLU three times; the tap is bn2(...) + identity."""
    torch.manual_seed(0)
    model = _trained_bn(torchvision.models.resnet18(num_classes=10), (3, 64, 64))
    parts = {}
    block = model.layer2[-1]  # identity shortcut
    hooks = [
        block.register_forward_pre_hook(lambda mod, args: parts.__setitem__("x", args[0].clone())),
        block.bn2.register_forward_hook(lambda mod, args, out: parts.__setitem__("bn2", out.clone())),
    ]
    with torch.no_grad(), stage_features(model, ["layer2"], preact=True) as feats:
        model(torch.randn(2, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert block.downsample is None
    assert torch.allclose(feats[0], parts["bn2"] + parts["x"], atol=1e-6)
    assert (feats[0] < 0).any()


def test_pooled_level_is_the_classifiers_input_as_a_1x1_map():
    torch.manual_seed(0)
    model = create_model("wrn_16_1", 10, 3).eval()  # final BN-ReLU after layer3, then pool and fc
    seen = {}
    hook = model.fc.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0].clone()))
    with torch.no_grad(), stage_features(model, ["layer1", "layer2", "layer3"], preact=True, pooled=True) as feats:
        model(torch.randn(3, 3, 32, 32))
    hook.remove()
    assert len(feats) == 4 and tuple(feats[-1].shape) == (3, 64, 1, 1)
    assert torch.equal(feats[-1].flatten(1), seen["x"])
    # WRN's stages end in the residual sum (no activation module): the tap is the stage output itself.
    assert (feats[2] < 0).any()


def test_distiller_taps_pre_activation_for_teacher_and_d_and_adds_the_pooled_level():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10, 3), create_model("resnet14", 10, 3)
    distiller = gpd.Distiller(student, teacher, "reviewkd", input_size=(3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        targets = distiller(x, torch.zeros(2, dtype=torch.long), part="dynamic").targets
        with distiller.kd_method.taps(distiller.network.dynamic, "dynamic") as d_feats:
            distiller.dynamic_logits(x)
    assert [tuple(f.shape) for f in targets.features] == [
        (2, 16, 32, 32),
        (2, 32, 16, 16),
        (2, 64, 8, 8),
        (2, 64, 1, 1),
    ]
    assert [tuple(f.shape) for f in d_feats] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 128, 1, 1)]
    assert all((f < 0).any() for f in targets.features[:3]) and all((f < 0).any() for f in d_feats[:3])
    post = gpd.Distiller(student, teacher, "reviewkd", input_size=(3, 32, 32), kd_options={"student_preact": False})
    with torch.no_grad(), post.kd_method.taps(post.network.dynamic, "dynamic") as d_post:
        post.dynamic_logits(x)
    assert all((f >= 0).all() for f in d_post)  # post-ReLU student/D taps; the teacher's stay pre-ReLU
    with torch.no_grad():
        assert any((f < 0).any() for f in post(x, torch.zeros(2, dtype=torch.long), part="dynamic").targets.features)


# ------------------------------------------------------------------ ABF init


def test_abf_projection_convs_use_kaiming_uniform_with_a_1():
    torch.manual_seed(0)
    abf = ABF(in_channels=64, mid_channels=128, out_channels=96, fuse=True)
    for conv in (abf.reduce[0], abf.project[0]):
        fan_in = conv.weight[0].numel()
        bound = math.sqrt(3.0 / fan_in)  # gain sqrt(2 / (1 + a^2)) = 1 for a = 1
        w = conv.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound
        assert abs(float(w.std()) - bound / math.sqrt(3.0)) < 0.03 * bound  # PyTorch's default would be 1/sqrt(3)
    # the attention conv keeps PyTorch's default (a = sqrt(5): bound 1 / sqrt(fan_in))
    att = abf.attention[0].weight.detach()
    assert att.abs().max() <= 1.0 / math.sqrt(att[0].numel())


# ------------------------------------------------------------------ the probe changes no buffer


@pytest.mark.parametrize("dynamic_teacher", [True, False])
def test_building_a_reviewkd_distiller_changes_no_buffer(dynamic_teacher, monkeypatch):
    """The probe passes that size ReviewKD's heads run in eval mode, and afterwards the student, D
    and the static teacher hold the buffers and modes of a Distiller whose method probes nothing."""
    student = _trained_bn(create_model("resnet8", 10, 3), (3, 32, 32), seed=1).train()
    teacher = _trained_bn(create_model("resnet14", 10, 3), (3, 32, 32), seed=2)
    before = {
        "student": {k: v.clone() for k, v in student.named_buffers()},
        "teacher": {k: v.clone() for k, v in teacher.named_buffers()},
    }
    original, modes_at_build = ReviewKD.build, []

    def spy(self, networks):
        modes_at_build.extend(m.training for n in networks if isinstance(n, RoleNetwork) for m in n.module.modules())
        return original(self, networks)

    monkeypatch.setattr(ReviewKD, "build", spy)
    built = {}
    for method in ("kd", "reviewkd"):
        torch.manual_seed(0)  # the same D (its symmetry-breaking noise) for both
        built[method] = gpd.Distiller(student, teacher, method, input_size=(3, 32, 32), dynamic_teacher=dynamic_teacher)
    assert modes_at_build and not any(modes_at_build), "the probe ran, in eval mode"
    plain, probed = built["kd"], built["reviewkd"]
    reference = dict(plain.named_buffers())
    buffers = {k: v for k, v in probed.named_buffers() if not k.startswith("kd_method.")}
    assert buffers.keys() == reference.keys() and any("num_batches_tracked" in k for k in buffers)
    for name, value in buffers.items():
        assert torch.equal(value, reference[name]), name
    modes = {name: m.training for name, m in plain.named_modules() if not name.startswith("kd_method")}
    assert {name: m.training for name, m in probed.named_modules() if name in modes} == modes
    for name, value in student.named_buffers():
        assert torch.equal(value, before["student"][name]), name
    for name, value in teacher.named_buffers():
        assert torch.equal(value, before["teacher"][name]), name
    assert not probed.static_teacher.training


def test_unchanged_state_restores_buffers_and_modes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout()).train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with unchanged_state(model):
        assert not any(m.training for m in model.modules())
        model.train()(torch.randn(2, 3, 8, 8))  # a pass in train mode moves the statistics
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == [True, True, True, False]


# ------------------------------------------------------------------ CE weight and ReviewKD warm-up


def _ce(logits, y):
    return float(-torch.log_softmax(logits.double(), dim=1)[torch.arange(len(y)), y].mean())


def test_kd_ce_weight_and_kd_weight_golden_values():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10, 3), create_model("resnet14", 10, 3)
    distiller = gpd.Distiller(
        student, teacher, "kd", input_size=(3, 32, 32), kd_options={"ce_weight": 0.1, "weight": 0.9, "temperature": 4.0}
    ).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    with torch.no_grad():
        losses = distiller(x, y).losses
        zs, zd, zt = distiller.student_logits(x).double(), distiller.dynamic_logits(x).double(), teacher(x).double()
    for role, z in (("student", zs), ("dynamic", zd)):
        assert float(losses[f"ce_{role}"]) == pytest.approx(0.1 * _ce(z, y), rel=1e-5)
        p_t = torch.softmax(zt / 4, dim=1)
        kl = float((p_t * (torch.log(p_t) - torch.log_softmax(z / 4, dim=1))).sum(1).mean())
        assert float(losses[f"kd_{role}"]) == pytest.approx(0.9 * 16 * kl, rel=1e-4)


@pytest.mark.parametrize("method", ["dkd", "reviewkd"])
def test_ce_weight_of_dkd_and_reviewkd(method):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10, 3), create_model("resnet14", 10, 3)
    distiller = gpd.Distiller(student, teacher, method, input_size=(3, 32, 32), kd_options={"ce_weight": 0.25}).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        losses = distiller(x, y, epoch=100.0).losses
        assert float(losses["ce_student"]) == pytest.approx(0.25 * _ce(distiller.student_logits(x), y), rel=1e-5)
        assert float(losses["ce_dynamic"]) == pytest.approx(0.25 * _ce(distiller.dynamic_logits(x), y), rel=1e-5)


def test_reviewkd_warmup_is_a_linear_ramp_of_its_weighted_loss():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10, 3), create_model("resnet14", 10, 3)
    distiller = gpd.Distiller(
        student, teacher, "reviewkd", input_size=(3, 32, 32), kd_options={"weight": 5.0, "warmup_epochs": 20.0}
    ).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        full = distiller(x, y, epoch=None).losses
        options = distiller.kd_method.options
        options.weight = 1.0
        unit = distiller(x, y, epoch=40.0).losses
        options.weight = 5.0
        for epoch in (0.0, 2.5, 5.0, 19.0, 20.0, 35.0):
            losses = distiller(x, y, epoch=epoch).losses
            for role in ("student", "dynamic"):
                expected = 5.0 * min(epoch / 20.0, 1.0) * float(unit[f"reviewkd_{role}"])
                assert float(losses[f"reviewkd_{role}"]) == pytest.approx(expected, rel=1e-5, abs=1e-12)
                assert float(losses[f"ce_{role}"]) == pytest.approx(float(full[f"ce_{role}"]), rel=1e-6)
    assert float(full["reviewkd_student"]) == pytest.approx(5.0 * float(unit["reviewkd_student"]), rel=1e-5)
    no_warmup = gpd.Distiller(student, teacher, "reviewkd", input_size=(3, 32, 32)).eval()
    with torch.no_grad():
        assert float(no_warmup(x, y, epoch=0.0).losses["reviewkd_student"]) > 0


def test_unknown_reviewkd_option_is_refused():
    student, teacher = create_model("resnet8", 10, 3), create_model("resnet14", 10, 3)
    with pytest.raises(gpd.ArgumentError, match="unknown ReviewKD options"):
        gpd.Distiller(student, teacher, "reviewkd", input_size=(3, 32, 32), kd_options={"warmup": 20})


# ------------------------------------------------------------------ bundled settings


def test_cifar100_configs_follow_mdistillers_protocol():
    for name in ("kd", "dkd", "reviewkd", "kd_gpd", "dkd_gpd", "reviewkd_gpd"):
        cfg = load_config(f"cifar100/{name}")
        t = cfg.train
        assert (t.epochs, t.lr, t.batch_size, list(t.decay_milestones), t.weight_decay, t.momentum) == (
            240,
            0.05,
            64,
            [150, 180, 210],
            5e-4,
            0.9,
        )
        assert (t.scheduler, t.decay_rate, t.warmup_epochs, t.optimizer) == ("multistep", 0.1, 0.0, "momentum")
        if name.startswith("kd"):
            assert (cfg.kd.ce_weight, cfg.kd.weight, cfg.kd.temperature) == (0.1, 0.9, 4.0)
        elif name.startswith("dkd"):
            d = cfg.dkd
            assert (d.ce_weight, d.alpha, d.beta, d.temperature, d.warmup_epochs) == (1.0, 1.0, 8.0, 4.0, 20.0)
        else:
            r = cfg.reviewkd
            assert (r.ce_weight, r.weight, r.warmup_epochs, r.mid_channels, r.student_preact) == (
                1.0,
                5.0,
                20.0,
                256,
                False,
            )


def test_imagenet_dkd_and_reviewkd_have_no_warmup():
    for name in ("r34_r18_dkd_gpd", "r50_mobilenetv1_dkd_gpd", "rvt_s_rvt_ti_dkd_gpd", "deit_s_deit_ti_dkd_gpd"):
        assert load_config(f"imagenet/{name}").dkd.warmup_epochs == 0.0
    for name in ("r34_r18_reviewkd_gpd", "r50_mobilenetv1_reviewkd_gpd", "rvt_s_rvt_ti_reviewkd_gpd"):
        cfg = load_config(f"imagenet/{name}")
        assert cfg.reviewkd.warmup_epochs == 0.0 and cfg.reviewkd.student_preact is True
