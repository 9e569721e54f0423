"""The KD-method interface: the registry, the options as config sections, Distiller.from_config,
and the student's logits in the Distiller's output."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

import gpd
from gpd.choices import KDMethodName
from gpd.config import load_config
from gpd.config.schema import Config, KDConfig
from gpd.distill import (
    KD_METHODS,
    DecoupledKD,
    Distiller,
    DistillerOutput,
    DynamicPart,
    HintonKD,
    KDMethod,
    KDOptions,
    NoKD,
    ReviewKD,
    total_loss,
)
from gpd.distill.kd_methods import DKDOptions, HintonKDOptions
from gpd.distill.registry import build_kd_method, kd_method_class
from gpd.distill.reviewkd import ReviewKDOptions
from gpd.errors import ArgumentError, ConfigError
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = (1, 28, 28)


def small_pair(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("resnet8", 10, 1), create_model("resnet14", 10, 1)


def old_kd_options(cfg: Config) -> dict[str, typing.Any] | None:
    """training.builders.kd_options as it was before Distiller.from_config replaced it."""
    return {
        "kd": {"temperature": cfg.kd.temperature, "weight": cfg.kd.weight, "ce_weight": cfg.kd.ce_weight},
        "dkd": {
            "alpha": cfg.dkd.alpha,
            "beta": cfg.dkd.beta,
            "temperature": cfg.dkd.temperature,
            "warmup_epochs": cfg.dkd.warmup_epochs,
            "ce_weight": cfg.dkd.ce_weight,
        },
        "reviewkd": {
            "weight": cfg.reviewkd.weight,
            "mid_channels": cfg.reviewkd.mid_channels,
            "warmup_epochs": cfg.reviewkd.warmup_epochs,
            "ce_weight": cfg.reviewkd.ce_weight,
            "student_preact": cfg.reviewkd.student_preact,
        },
    }.get(cfg.kd.method)


# ------------------------------------------------------------------ the registry


def test_the_registry_holds_one_class_per_kd_method_name():
    assert tuple(KD_METHODS) == typing.get_args(KDMethodName)
    assert KD_METHODS == {"none": NoKD, "kd": HintonKD, "dkd": DecoupledKD, "reviewkd": ReviewKD}
    for name, cls in KD_METHODS.items():
        assert issubclass(cls, KDMethod) and cls.name == name and kd_method_class(name) is cls
        assert cls.needs_teacher == (name != "none")


def test_an_unknown_method_name_is_refused_with_the_choices_of_the_literal():
    message = r"kd must be none, kd, dkd or reviewkd or an import path \(package.module:ClassName or .*got 'hinton'"
    with pytest.raises(ArgumentError, match=message):
        kd_method_class("hinton")
    student, teacher = small_pair()
    with pytest.raises(ArgumentError, match=message):
        Distiller(student, teacher, kd="hinton", input_size=SIZE)  # type: ignore[arg-type]


def test_the_distiller_holds_a_method_object():
    student, teacher = small_pair()
    distiller = Distiller(student, teacher, kd="dkd", kd_options={"beta": 2.0}, input_size=SIZE)
    assert isinstance(distiller.kd_method, DecoupledKD)
    assert distiller.kd_method.options == DKDOptions(beta=2.0)
    assert isinstance(Distiller(student, input_size=SIZE).kd_method, NoKD)


def test_unknown_options_of_every_method_are_refused():
    student, teacher = small_pair()
    for kd, title in (("kd", "KD"), ("dkd", "DKD"), ("reviewkd", "ReviewKD")):
        with pytest.raises(ArgumentError, match=f"unknown {title} options \\['gamma'\\]; use "):
            Distiller(student, teacher, kd=kd, kd_options={"gamma": 1.0}, input_size=SIZE)


def test_a_method_object_or_a_plain_loss_can_be_given_instead_of_a_name():
    student, teacher = small_pair()
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    torch.manual_seed(1)
    by_name = Distiller(student, teacher, "kd", kd_options={"temperature": 2.0, "ce_weight": 0.5}, input_size=SIZE)
    torch.manual_seed(1)
    method = HintonKD(HintonKDOptions(temperature=2.0, ce_weight=0.5))
    by_object = Distiller(student, teacher, method, input_size=SIZE)
    assert by_object.kd_method is method and by_object.ce_weight == 0.5
    with torch.no_grad():
        a, b = by_name.eval()(x, y).losses, by_object.eval()(x, y).losses
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ArgumentError, match="kd_options go with a method name"):
        Distiller(student, teacher, method, kd_options={"temperature": 3.0}, input_size=SIZE)

    def plain(z, z_t, target, epoch):
        return (z - z_t).pow(2).mean()

    custom = Distiller(student, teacher, plain, kd_options={"ce_weight": 0.25}, dynamic_teacher=False).eval()
    with torch.no_grad():
        losses = custom(x, y).losses
        assert torch.equal(losses["kd_student"], plain(student.eval()(x), teacher(x), y, None))
    assert custom.ce_weight == 0.25


# ------------------------------------------------------------------ the options are the config sections


def test_the_config_sections_are_the_methods_options():
    cfg = Config()
    assert type(cfg.dkd) is DKDOptions and type(cfg.reviewkd) is ReviewKDOptions
    assert isinstance(cfg.kd, HintonKDOptions) and isinstance(cfg.kd, KDConfig)
    for name, cls in KD_METHODS.items():  # every built-in section is its method's options, from the registry
        if cls.section is not None:
            assert isinstance(getattr(cfg, cls.section), cls.Options), name
            assert issubclass(cls.Options, KDOptions), name  # ce_weight declared once, in KDOptions
    assert [f.name for f in dataclasses.fields(KDConfig)] == ["method", "ce_weight", "temperature", "weight"]
    assert dataclasses.asdict(cfg.kd) == {"method": "none", "ce_weight": 1.0, "temperature": 4.0, "weight": 1.0}
    assert dataclasses.asdict(cfg.dkd) == {
        "ce_weight": 1.0,
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "warmup_epochs": 20.0,
    }
    assert dataclasses.asdict(cfg.reviewkd) == {
        "ce_weight": 1.0,
        "weight": 1.0,
        "mid_channels": 64,
        "warmup_epochs": 0.0,
        "student_preact": True,
    }
    for key, message in (
        ("kd.temperature=0", "kd.temperature must be > 0, got 0.0"),
        ("dkd.temperature=-1", "dkd.temperature must be > 0, got -1.0"),
        ("reviewkd.mid_channels=0", "reviewkd.mid_channels must be >= 1, got 0"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(None, [key])
        assert str(err.value) == message
    with pytest.raises(ArgumentError, match="^DKD option temperature must be > 0, got 0.0$"):
        DecoupledKD(DKDOptions(temperature=0.0))


OVERRIDES = {
    "kd": ["kd.temperature=2.5", "kd.weight=0.9", "kd.ce_weight=0.1"],
    "dkd": ["dkd.alpha=0.5", "dkd.beta=2.0", "dkd.temperature=1.5", "dkd.warmup_epochs=4", "dkd.ce_weight=0.3"],
    "reviewkd": [
        "reviewkd.weight=2.0",
        "reviewkd.mid_channels=8",
        "reviewkd.warmup_epochs=3",
        "reviewkd.ce_weight=0.7",
        "reviewkd.student_preact=false",
    ],
}


@pytest.mark.parametrize("method", ["none", "kd", "dkd", "reviewkd"])
def test_from_config_gives_the_distiller_of_the_old_kd_options_mapping(method):
    teacher_keys = [] if method == "none" else ["teacher.model=resnet14"]
    cfg = load_config(
        None,
        [f"kd.method={method}", *teacher_keys, *OVERRIDES.get(method, []), "train.label_smoothing=0.1"]
        + ["gpd.sce_weight=2.0", "gpd.noise_std=0.01", "gpd.ratio=2"],
    )
    student, teacher = small_pair()
    teacher_or_none = teacher if method != "none" else None
    torch.manual_seed(3)
    new = Distiller.from_config(cfg, student, teacher_or_none, input_size=SIZE)
    torch.manual_seed(3)
    old = Distiller(
        student,
        teacher_or_none,
        cfg.kd.method,
        kd_options=old_kd_options(cfg),
        dynamic_teacher=cfg.gpd.enabled,
        ratio=cfg.gpd.ratio,
        sce_weight=cfg.gpd.sce_weight,
        sce_eps=cfg.gpd.sce_eps,
        label_smoothing=cfg.train.label_smoothing,
        noise_std=cfg.gpd.noise_std,
        input_size=SIZE,
        branches=cfg.gpd.branches,
        branch_init=cfg.gpd.branch_init,
        share_parameters=cfg.gpd.share,
        step_rule=cfg.gpd.step_rule,
        layout=cfg.gpd.layout,
    )
    assert type(new.kd_method) is KD_METHODS[method]
    assert dataclasses.asdict(new.kd_method.options) == (old_kd_options(cfg) or {})
    assert new.kd_method.options is not getattr(cfg, method, None)  # a copy: the config is not shared
    new_state, old_state = new.state_dict(), old.state_dict()
    assert new_state.keys() == old_state.keys() and all(torch.equal(new_state[k], old_state[k]) for k in new_state)
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    a, b = new.train()(x, y, epoch=1.0).losses, old.train()(x, y, epoch=1.0).losses
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_options_of_from_config_reach_the_loss():
    cfg = load_config(None, ["kd.method=dkd", "teacher.model=resnet14", "gpd.enabled=false", *OVERRIDES["dkd"]])
    student, teacher = small_pair()
    distiller = Distiller.from_config(cfg, student, teacher, input_size=SIZE).eval()
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    with torch.no_grad():
        losses = distiller(x, y, epoch=2.0).losses  # half of the warm-up (dkd.warmup_epochs=4)
        z, z_t = student.eval()(x), teacher(x)
    expected = 0.5 * gpd.losses.dkd(z, z_t, y, alpha=0.5, beta=2.0, temperature=1.5)
    torch.testing.assert_close(losses["kd_student"], expected)
    torch.testing.assert_close(losses["ce_student"], 0.3 * torch.nn.functional.cross_entropy(z, y))


# ------------------------------------------------------------------ the student's logits in the output


@pytest.mark.parametrize("dynamic_teacher", [True, False])
def test_every_call_returns_the_losses_and_the_students_logits(dynamic_teacher):
    student, teacher = small_pair()
    distiller = Distiller(student, teacher, "dkd", dynamic_teacher=dynamic_teacher, input_size=SIZE).eval()
    x, y = torch.randn(6, *SIZE), torch.randint(0, 10, (6,))
    with torch.no_grad():
        out = distiller(x, y, epoch=1.0)
        logits = distiller.student_logits(x)
    assert isinstance(out, DistillerOutput)
    assert torch.equal(out.student_logits, logits)
    losses, unpacked = out  # a tuple: (losses, student_logits)
    assert losses is out.losses and unpacked is out.student_logits
    assert torch.equal(out.loss, sum(out.losses.values())) and torch.equal(out.loss, total_loss(out.losses))
    expected = {"ce_student", "kd_student"} | ({"ce_dynamic", "kd_dynamic", "sce"} if dynamic_teacher else set())
    assert set(out.losses) == expected
    with torch.no_grad():
        dynamic = distiller(x, y, epoch=1.0, part="dynamic")
        student = distiller(x, y, epoch=1.0, part="student", dynamic=dynamic)
    assert isinstance(dynamic, DynamicPart) and isinstance(student, DistillerOutput)
    assert torch.equal(dynamic.targets.logits, teacher(x))
    assert (dynamic.dynamic_logits is not None) == dynamic_teacher
    both = {**dynamic.losses, **student.losses}
    assert list(both) == list(out.losses) and all(torch.equal(both[k], out.losses[k]) for k in both)
    assert torch.equal(student.student_logits, logits)


def test_the_phases_are_refused_without_what_they_need():
    student, teacher = small_pair()
    distiller = Distiller(student, teacher, "kd", input_size=SIZE).eval()
    x, y = torch.randn(2, *SIZE), torch.randint(0, 10, (2,))
    with pytest.raises(ArgumentError, match="part='student' needs dynamic="):
        distiller(x, y, part="student")
    with pytest.raises(ArgumentError, match="part must be 'all', 'dynamic' or 'student', got 'both'"):
        distiller(x, y, part="both")


def test_the_students_phase_sends_no_gradient_into_ds_logits():
    student, _ = small_pair()
    distiller = Distiller(student, input_size=SIZE, share_parameters=False).train()  # D's tensors apart
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    dynamic = distiller(x, y, part="dynamic")
    assert dynamic.dynamic_logits is not None and dynamic.dynamic_logits.requires_grad  # not detached by the caller
    distiller(x, y, part="student", dynamic=dynamic).loss.backward()
    assert all(p.grad is None for p in distiller.network.dynamic.parameters())
    assert all(p.grad is not None for p in distiller.network.student.parameters())


def test_the_logits_in_the_output_carry_the_students_gradient():
    student, teacher = small_pair()
    distiller = Distiller(student, teacher, "kd", input_size=SIZE).train()
    out = distiller(torch.randn(4, *SIZE), torch.randint(0, 10, (4,)))
    assert out.student_logits.requires_grad
    out.loss.backward()


def test_build_kd_method_is_what_the_distiller_uses():
    method = build_kd_method("reviewkd", {"mid_channels": 16.0})
    assert isinstance(method, ReviewKD) and method.options.mid_channels == 16
    assert type(method.options.mid_channels) is int  # converted to the option's type, as before
    assert gpd.Distiller is Distiller
