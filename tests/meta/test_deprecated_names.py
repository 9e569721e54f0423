"""The old names of the dynamic teacher D and of λ (gpd.deprecated): each still works and warns.

D was ``teacher`` (GPDModel.teacher, forward_teacher, role="teacher", the loss key
ce_teacher, the metrics column teacher_acc, state_dict keys teacher.*), and λ was
``gpd.kd_weight``; they are now ``dynamic`` and ``gpd.sce_weight``. Old run directories:
test_deprecated_runs.py.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import gpd
from gpd.cli.main import main
from gpd.config import bundled_config_names, load_config
from gpd.distill import Distiller, DistillerOutput
from gpd.errors import ConfigError
from gpd.losses import sce
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = (1, 28, 28)


def expanded(seed: int = 0) -> gpd.GPDModel:
    torch.manual_seed(seed)
    return gpd.expand(create_model("resnet8", num_classes=10, in_chans=1), 2, input_size=SIZE).eval()


def old_keys(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` as an older gpd saved it: D under ``{prefix}teacher.`` instead of ``{prefix}dynamic.``."""
    new = f"{prefix}dynamic."
    return {(f"{prefix}teacher." + k[len(new) :] if k.startswith(new) else k): v for k, v in state.items()}


def old_network_keys(state: dict[str, torch.Tensor], old: str = "gpd") -> dict[str, torch.Tensor]:
    """A Distiller's ``state`` as an older gpd saved it: the network under ``gpd.`` (or ``plain.``)."""
    return {(f"{old}." + k[len("network.") :] if k.startswith("network.") else k): v for k, v in state.items()}


def messages(record: list[warnings.WarningMessage], category: type[Warning]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, category)]


# ------------------------------------------------------------------------ config: gpd.kd_weight


def test_kd_weight_in_a_yaml_file_is_read_as_sce_weight(tmp_path: Path):
    path = tmp_path / "old.yaml"
    path.write_text("gpd:\n  ratio: 2.0\n  kd_weight: 1.5\nkd:\n  weight: 0.25\n")
    with pytest.warns(FutureWarning, match=r"gpd\.kd_weight .*use gpd\.sce_weight"):
        cfg = load_config(str(path))
    assert cfg.gpd.sce_weight == 1.5 and cfg.kd.weight == 0.25  # kd.weight is the KD method's, untouched


def test_kd_weight_as_an_override_is_read_as_sce_weight():
    with pytest.warns(FutureWarning, match=r"override 'gpd\.kd_weight=2\.5'.*use gpd\.sce_weight"):
        cfg = load_config(None, ["gpd.kd_weight=2.5"])
    assert cfg.gpd.sce_weight == 2.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name and kd.weight warn about nothing
        assert load_config(None, ["gpd.sce_weight=2.5", "kd.weight=0.5"]).gpd.sce_weight == 2.5


def test_a_later_layer_overrides_the_old_name_with_the_new(tmp_path: Path):
    path = tmp_path / "old.yaml"
    path.write_text("gpd:\n  kd_weight: 1.5\n")
    with pytest.warns(FutureWarning):
        assert load_config(str(path), ["gpd.sce_weight=4"]).gpd.sce_weight == 4.0


def test_old_and_new_name_both_given_is_a_one_line_error(tmp_path: Path, capsys):
    path = tmp_path / "both.yaml"
    path.write_text("gpd:\n  kd_weight: 1.5\n  sce_weight: 2.0\n")
    with pytest.raises(
        ConfigError, match=r"gpd\.kd_weight and gpd\.sce_weight are both given in .*keep only gpd\.sce_weight"
    ):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"'gpd\.kd_weight' and 'gpd\.sce_weight' both given"):
        load_config(None, ["gpd.kd_weight=1", "gpd.sce_weight=2"])
    assert main(["train", "--dry-run", "gpd.sce_weight=2", "gpd.kd_weight=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpd: error: ") and err.count("\n") == 1 and "gpd.sce_weight" in err


def test_bundled_configs_use_the_new_name_only():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for name in bundled_config_names():
            load_config(name)


def test_the_config_attribute_alias_warns():
    cfg = load_config(None, ["gpd.sce_weight=1.25"])
    with pytest.warns(DeprecationWarning, match="GPDConfig.sce_weight"):
        assert cfg.gpd.kd_weight == 1.25
    with pytest.warns(DeprecationWarning):
        cfg.gpd.kd_weight = 2.0
    assert cfg.gpd.sce_weight == 2.0


# ------------------------------------------------------------------------ GPDModel and the pairs


def test_teacher_attribute_and_methods_warn_and_delegate():
    model = expanded()
    x = torch.randn(2, *SIZE)
    with pytest.warns(DeprecationWarning, match=r"GPDModel\.teacher is deprecated, use GPDModel\.dynamic"):
        assert model.teacher is model.dynamic
    with torch.no_grad():
        with pytest.warns(DeprecationWarning, match=r"forward_dynamic\(\)"):
            assert torch.equal(model.forward_teacher(x), model.forward_dynamic(x))
        with pytest.warns(DeprecationWarning, match=r"role='dynamic'"):
            assert torch.equal(model(x, role="teacher"), model(x, role="dynamic"))
        with pytest.warns(DeprecationWarning, match=r"export_dynamic\(\)"):
            exported = model.export_teacher()
        assert torch.equal(exported.eval()(x), model.forward_dynamic(x))
    with pytest.warns(DeprecationWarning, match="ExpansionReport.dynamic_error"):
        assert model.report.teacher_error == model.report.dynamic_error
    with pytest.raises(ValueError, match="'student' or 'dynamic'"):
        model(x, role="static")


def test_teacher_is_an_alias_to_read_and_nn_modules_setattr_is_kept():
    """Assigning the old name ``teacher`` is no longer supported (gpd.deprecated): the pairs keep
    nn.Module's own ``__setattr__``, and ``teacher`` reads whatever ``dynamic`` was assigned."""
    from gpd.gpd_model import PairRoles

    assert "__setattr__" not in vars(PairRoles) and gpd.GPDModel.__setattr__ is nn.Module.__setattr__
    model = expanded()
    wider = copy.deepcopy(model.dynamic)
    model.dynamic = wider
    with pytest.warns(DeprecationWarning, match="GPDModel.dynamic"):
        assert model.teacher is wider
    assert set(dict(model.named_children())) == {"dynamic", "student"}


def test_constructor_takes_the_old_keyword():
    model = expanded()
    with pytest.warns(DeprecationWarning, match=r"dynamic=\.\.\."):
        again = gpd.GPDModel(teacher=model.dynamic, student=model.student, plan=model.plan, report=model.report)
    assert again.dynamic is model.dynamic


def test_an_old_state_dict_loads_into_a_fresh_model_with_identical_outputs():
    trained, fresh = expanded(seed=0), expanded(seed=1)
    with torch.no_grad():  # move D and the student's BatchNorm statistics away from the fresh model's
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trained.train()
    with torch.no_grad():
        trained.forward_student(torch.randn(8, *SIZE))
    trained.eval()
    old = old_keys(trained.state_dict())
    assert any(k.startswith("teacher.") for k in old) and not any(k.startswith("dynamic.") for k in old)
    with pytest.warns(FutureWarning, match=r"'teacher\.\*'; loaded as 'dynamic\.\*'"):
        result = fresh.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        assert torch.equal(fresh.forward_dynamic(x), trained.forward_dynamic(x))
        assert torch.equal(fresh.forward_student(x), trained.forward_student(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a state_dict with the new keys loads silently
        fresh.load_state_dict(trained.state_dict())


class Wrapped(nn.Module):
    """A static teacher whose own child happens to be called ``teacher``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.teacher = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)


@pytest.mark.parametrize("share", [True, False])
def test_an_old_distiller_state_dict_loads_and_the_static_teacher_keys_stay(share: bool):
    def build(seed: int) -> Distiller:
        torch.manual_seed(seed)
        static = Wrapped(create_model("resnet14", num_classes=10, in_chans=1))
        student = create_model("resnet8", num_classes=10, in_chans=1)
        return Distiller(student, static, kd="kd", input_size=SIZE, share_parameters=share).eval()

    trained, fresh = build(0), build(0)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    old = old_keys(old_network_keys(trained.state_dict()), prefix="gpd.")
    assert any(k.startswith("static_teacher.teacher.") for k in old) and any(k.startswith("gpd.teacher.") for k in old)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fresh.load_state_dict(old, strict=True)
    said = " | ".join(messages(record, FutureWarning))
    assert "'gpd.*'; loaded as 'network.*'" in said and "'network.teacher.*'" in said, said
    assert not result.missing_keys and not result.unexpected_keys
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    with torch.no_grad():
        assert torch.equal(fresh.dynamic_logits(x), trained.dynamic_logits(x))
        assert torch.equal(fresh.student_logits(x), trained.student_logits(x))
        assert torch.equal(fresh.static_teacher(x), trained.static_teacher(x))
        losses = fresh(x, y).losses
    assert set(losses) == {"ce_dynamic", "kd_dynamic", "ce_student", "kd_student", "sce"}


def older_layout(state: dict[str, torch.Tensor], *, dynamic_as_teacher: bool) -> dict[str, torch.Tensor]:
    """A ReviewKD Distiller's ``state`` as older gpd releases saved it: the network under ``gpd.``, the
    heads under ``review_heads.<role>.`` and, older still, D's role named ``teacher``."""
    state = {("review_heads." + k[len("kd_method.heads.") :] if k.startswith("kd_method.heads.") else k): v
             for k, v in old_network_keys(state).items()}  # fmt: skip
    if dynamic_as_teacher:
        state = old_keys(old_keys(state, "gpd."), "review_heads.")
    return state


@pytest.mark.parametrize("dynamic_as_teacher", [False, True])
def test_an_old_reviewkd_distiller_state_dict_loads(dynamic_as_teacher: bool):
    def build() -> Distiller:
        torch.manual_seed(0)
        return Distiller(
            create_model("resnet8", 10, 1), create_model("resnet14", 10, 1), "reviewkd", input_size=SIZE
        ).eval()

    trained, fresh = build(), build()
    assert set(trained.kd_method.heads) == {"student", "dynamic"}
    with torch.no_grad():
        for p in trained.kd_method.heads.parameters():
            p.add_(0.01 * torch.randn_like(p))
    old = older_layout(trained.state_dict(), dynamic_as_teacher=dynamic_as_teacher)
    assert any(k.startswith("review_heads.student.") for k in old) and not any(k.startswith("kd_method") for k in old)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fresh.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    said = " | ".join(messages(record, FutureWarning))
    assert "'review_heads.*'; loaded as 'kd_method.heads.*'" in said and "static_teacher" not in said, said
    if dynamic_as_teacher:
        assert "D's ReviewKD head" in said and "'network.teacher.*'" in said, said
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    with torch.no_grad():
        assert torch.equal(fresh(x, y).losses["reviewkd_dynamic"], trained(x, y).losses["reviewkd_dynamic"])
    with pytest.warns(
        DeprecationWarning, match=r"Distiller\.review_heads is deprecated, use Distiller\.kd_method\.heads"
    ):
        assert fresh.review_heads is fresh.kd_method.heads


def test_an_old_timm_task_checkpoint_loads():
    from gpd.integrations.timm import GPDTask

    def build() -> GPDTask:
        torch.manual_seed(0)
        return GPDTask(create_model("resnet8", 10, 1), create_model("resnet14", 10, 1), kd="reviewkd", input_size=SIZE)

    task, other = build(), build()
    with torch.no_grad():
        for p in task.distiller.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    state = task.get_checkpoint_state()
    old_state = old_keys(state["state_dict"], "pair.")
    heads = state["task_state"]["kd_method"]  # an older gpd's task state: {"review_heads": {<role>.*}}
    old_heads = {k[len("heads.") :].replace("dynamic.", "teacher.", 1): v for k, v in heads.items()}
    assert any(k.startswith("pair.teacher.") for k in old_state) and any(k.startswith("teacher.") for k in old_heads)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        other.load_checkpoint_state(old_state, {"review_heads": old_heads})
    said = " | ".join(messages(record, FutureWarning))
    assert "'pair.teacher.*'" in said and "D's ReviewKD head" in said, said
    task.eval()
    other.eval()
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    with torch.no_grad():
        assert torch.equal(other.get_eval_model()(x), task.get_eval_model()(x))
        assert torch.equal(other.distiller.dynamic_logits(x), task.distiller.dynamic_logits(x))
        assert torch.equal(
            other.distiller(x, y).losses["reviewkd_dynamic"], task.distiller(x, y).losses["reviewkd_dynamic"]
        )


# ------------------------------------------------------------------------ Distiller and losses


def test_distiller_old_methods_and_keywords_warn_and_delegate():
    torch.manual_seed(0)
    distiller = Distiller(create_model("resnet8", 10, 1), input_size=SIZE).eval()
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    with torch.no_grad():
        with pytest.warns(DeprecationWarning, match=r"Distiller\.dynamic_logits\(\)"):
            assert torch.equal(distiller.teacher_logits(x), distiller.dynamic_logits(x))
        dynamic = distiller(x, y, part="dynamic")
        expected = distiller(x, y, part="student", dynamic=dynamic)
        with pytest.warns(DeprecationWarning, match=r"Distiller\.static_targets\(\) .*part='dynamic'"):
            targets = distiller.static_targets(x)
        assert targets == dynamic.targets
        for old_name in ("teacher_losses", "dynamic_losses"):
            with pytest.warns(DeprecationWarning, match=rf"Distiller\.{old_name}\(\) .*part='dynamic'"):
                losses, logits = getattr(distiller, old_name)(x, y, targets)
            assert set(losses) == {"ce_dynamic"} and torch.equal(logits, dynamic.dynamic_logits)
        with pytest.warns(DeprecationWarning, match=r"dynamic=<the DynamicPart"):
            old = distiller(x, y, part="student", targets=targets, dynamic_logits=logits)
        assert isinstance(old, DistillerOutput) and old.losses.keys() == expected.losses.keys()
        assert all(torch.equal(old.losses[k], expected.losses[k]) for k in old.losses)
        with pytest.warns(DeprecationWarning, match=r"dynamic_logits=\.\.\."):
            old = distiller(x, y, part="student", targets=targets, teacher_logits=logits)
        assert float(old.losses["sce"]) == float(expected.losses["sce"])
        with pytest.warns(DeprecationWarning, match=r"Distiller\.student_output\(\)"):
            direct = distiller.student_output(x, y, targets, logits)
        assert torch.equal(direct.student_logits, expected.student_logits)
        with pytest.warns(DeprecationWarning, match=r"dynamic_logits=\.\.\."):
            with pytest.warns(DeprecationWarning, match=r"Distiller\.student_losses\(\)"):
                old_losses = distiller.student_losses(x, y, targets, teacher_logits=logits)
        assert float(old_losses["sce"]) == float(expected.losses["sce"])
        with pytest.raises(TypeError, match="give only dynamic_logits"):
            distiller(x, y, part="student", targets=targets, teacher_logits=logits, dynamic_logits=logits)
        with pytest.warns(DeprecationWarning, match="with_student_logits"):
            out = distiller(x, y, with_student_logits=True)
        assert isinstance(out, DistillerOutput) and out.losses.keys() == {"ce_dynamic", "ce_student", "sce"}
        with pytest.raises(TypeError, match="unexpected keyword"):
            distiller(x, y, with_logits=True)


@pytest.mark.parametrize("dynamic_teacher", [True, False])
def test_the_old_names_of_the_network_warn(dynamic_teacher: bool):
    torch.manual_seed(0)
    distiller = Distiller(create_model("resnet8", 10, 1), input_size=SIZE, dynamic_teacher=dynamic_teacher)
    with pytest.warns(DeprecationWarning, match=r"Distiller\.gpd is deprecated, use Distiller\.network"):
        assert distiller.gpd is (distiller.network if dynamic_teacher else None)
    with pytest.warns(DeprecationWarning, match=r"Distiller\.plain is deprecated, use Distiller\.network"):
        assert distiller.plain is (None if dynamic_teacher else distiller.network)
    with pytest.warns(DeprecationWarning, match=r"Distiller\.student_module\(\) is deprecated, use Distiller\.student"):
        assert distiller.student_module() is distiller.student
    assert all(k.startswith("network.") for k in distiller.state_dict())


@pytest.mark.parametrize("dynamic_teacher", [True, False])
def test_a_state_dict_with_the_network_under_gpd_or_plain_loads(dynamic_teacher: bool):
    def build() -> Distiller:
        torch.manual_seed(0)
        return Distiller(create_model("resnet8", 10, 1), input_size=SIZE, dynamic_teacher=dynamic_teacher).eval()

    trained, fresh = build(), build()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    old_name = "gpd" if dynamic_teacher else "plain"
    old = old_network_keys(trained.state_dict(), old_name)
    assert all(k.startswith(f"{old_name}.") for k in old)
    with pytest.warns(FutureWarning, match=rf"'{old_name}\.\*'; loaded as 'network\.\*'"):
        result = fresh.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(fresh.student_logits(x), trained.student_logits(x))


def test_compensate_step_keyword_and_config_key_become_step_rule(tmp_path: Path):
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    for old, rule in ((True, "plain"), (False, "paper")):
        with pytest.warns(DeprecationWarning, match=r"compensate_step=\.\.\.\) is deprecated, use step_rule="):
            distiller = Distiller(student, input_size=SIZE, compensate_step=old)
        assert distiller.network.step_rule == rule
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="give only step_rule"):
        Distiller(student, input_size=SIZE, compensate_step=True, step_rule="plain")
    for value, rule in (("true", "plain"), ("false", "paper"), ("True", "plain")):
        with pytest.warns(FutureWarning, match=r"gpd\.compensate_step .*use gpd\.step_rule"):
            assert load_config(None, [f"gpd.compensate_step={value}"]).gpd.step_rule == rule
    path = tmp_path / "old.yaml"
    path.write_text("gpd:\n  kd_weight: 2.0\n  compensate_step: true\n")
    with pytest.warns(FutureWarning):
        cfg = load_config(str(path))
    assert cfg.gpd.step_rule == "plain" and cfg.gpd.sce_weight == 2.0  # both old keys of one section renamed
    with pytest.warns(DeprecationWarning, match="GPDConfig.step_rule"):
        assert cfg.gpd.compensate_step is True
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="compensate_step .*must be true or false"):
        load_config(None, ["gpd.compensate_step=maybe"])
    with pytest.raises(ConfigError, match="both given"):
        load_config(None, ["gpd.compensate_step=true", "gpd.step_rule=plain"])


def test_sce_takes_the_old_keyword():
    student, dynamic = torch.randn(3, 5), torch.randn(3, 5)
    with pytest.warns(DeprecationWarning, match=r"dynamic_logits=\.\.\."):
        assert torch.equal(sce(student, teacher_logits=dynamic), sce(student, dynamic))
