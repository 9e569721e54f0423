"""A KD method of the user's, defined in this one file, through the API and through ``gpd train``.

``MarginKD`` distils the static teacher's logits with a squared hinge on their distance beyond a
margin, after a learnable map of the role's logits (a head per role, sized by a probing pass),
and has its own options dataclass and config section ``margin_kd``. Nothing in gpd names it:
the registry (``gpd.register_kd_method``, or ``kd.method=<this file>:MarginKD``) is the whole
change. The registry's policy (duplicates, override, unknown names) is tested here too.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import gpd
from gpd.cli.main import main
from gpd.config import load_config, to_yaml
from gpd.distill import KD_METHODS, Distiller, KDMethod, KDNetworks, KDOptions, kd_method_class, logits_of
from gpd.distill.method import StaticTargets
from gpd.errors import ArgumentError, ConfigError
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = (1, 28, 28)
THIS_FILE = Path(__file__).resolve()
METHOD = f"{THIS_FILE}:MarginKD"


@dataclass
class MarginKDOptions(KDOptions):
    """The ``margin_kd.*`` keys: the margin inside which logits may differ freely, and the weight."""

    margin: float = 1.0
    weight: float = 0.5

    def problems(self) -> list[str]:
        return [] if self.margin >= 0 else [f"margin must be >= 0, got {self.margin}"]


class MarginKD(KDMethod):
    """``weight * mean(relu(|head(z) - z_T| - margin)^2)``, head a learnable map of the role's logits."""

    name = "margin_kd"
    title = "margin KD"
    section = "margin_kd"
    Options = MarginKDOptions
    options: MarginKDOptions

    def build(self, networks: KDNetworks) -> None:
        with torch.no_grad():
            classes = logits_of(networks.student.forward(networks.example_input)).shape[-1]
        for role in ("student", "dynamic") if networks.dynamic is not None else ("student",):
            head = nn.Linear(classes, classes)
            nn.init.eye_(head.weight)
            nn.init.zeros_(head.bias)
            self.heads[role] = head

    def losses(
        self,
        role: str,
        logits: torch.Tensor,
        features: list[torch.Tensor],
        targets: StaticTargets,
        y: torch.Tensor,
        epoch: float | None,
    ) -> dict[str, torch.Tensor]:
        assert targets.logits is not None
        gap = (self.heads[role](logits) - targets.logits).abs() - self.options.margin
        return {f"margin_{role}": self.options.weight * F.relu(gap).square().mean()}


class OtherKD(MarginKD):
    name = "other_kd"


@pytest.fixture(autouse=True)
def clean_registry():
    """Each test starts and ends with gpd's built-in methods only."""
    yield
    for name in ("margin_kd", "other_kd", "kd"):
        KD_METHODS.unregister(name)


def small_pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return create_model("resnet8", 10, 1), create_model("resnet14", 10, 1)


# ------------------------------------------------------------------------ the registry


def test_registering_a_method_and_its_conflicts():
    builtins = list(KD_METHODS)
    gpd.register_kd_method("margin_kd", MarginKD)
    gpd.register_kd_method("margin_kd", MarginKD)  # the same class again: nothing changes
    assert kd_method_class("margin_kd") is MarginKD and list(KD_METHODS) == [*builtins, "margin_kd"]
    with pytest.raises(ArgumentError, match="'margin_kd' is registered already .*override=True"):
        gpd.register_kd_method("margin_kd", OtherKD)
    gpd.register_kd_method("margin_kd", OtherKD, override=True)
    assert KD_METHODS["margin_kd"] is OtherKD
    with pytest.raises(ArgumentError, match="KDMethod subclass"):
        gpd.register_kd_method("loss", nn.MSELoss)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="without ':'"):
        gpd.register_kd_method("a:b", MarginKD)


def test_a_users_method_wins_over_a_builtin_of_its_name():
    with KD_METHODS.override("kd", MarginKD):
        assert kd_method_class("kd") is MarginKD
    assert kd_method_class("kd").__name__ == "HintonKD"
    gpd.register_kd_method("kd", MarginKD)
    assert kd_method_class("kd") is MarginKD
    KD_METHODS.unregister("kd")
    assert kd_method_class("kd").__name__ == "HintonKD"


def test_an_unknown_name_is_one_line_listing_the_registered_names():
    gpd.register_kd_method("margin_kd", MarginKD)
    with pytest.raises(ArgumentError) as err:
        kd_method_class("margin")
    assert str(err.value) == (
        "kd must be none, kd, dkd, reviewkd or margin_kd or an import path "
        "(package.module:ClassName or path/to/file.py:ClassName), got 'margin'"
    )
    with pytest.raises(
        ConfigError, match=r"^kd.method must be none, kd, dkd, reviewkd or margin_kd or .*got 'margin'$"
    ):
        load_config(None, ["kd.method=margin", "teacher.model=resnet8"])
    with pytest.raises(ConfigError, match=r"^kd.method: KD method .*no_such_file.py:MarginKD'.* does not exist$"):
        load_config(None, ["kd.method=no_such_file.py:MarginKD", "teacher.model=resnet8"])
    with pytest.raises(ConfigError, match=r"^kd.method: .*:small_pair is <function small_pair .*not a subclass"):
        load_config(None, [f"kd.method={THIS_FILE}:small_pair", "teacher.model=resnet8"])


# ------------------------------------------------------------------------ the API


@pytest.mark.parametrize("dynamic_teacher", [True, False])
def test_the_method_by_name_class_or_object_through_the_api(dynamic_teacher: bool):
    gpd.register_kd_method("margin_kd", MarginKD)
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    outputs = []
    for kd in ("margin_kd", MarginKD, MarginKD(MarginKDOptions(margin=0.5, weight=2.0))):
        student, teacher = small_pair()
        options = {"margin": 0.5, "weight": 2.0} if not isinstance(kd, KDMethod) else None
        torch.manual_seed(1)
        distiller = Distiller(
            student, teacher, kd, kd_options=options, dynamic_teacher=dynamic_teacher, input_size=SIZE
        )
        assert isinstance(distiller.kd_method, MarginKD) and distiller.kd_method.options.margin == 0.5
        roles = {"student", "dynamic"} if dynamic_teacher else {"student"}
        assert set(distiller.kd_method.heads) == roles
        assert {f"kd_method.heads.{r}.weight" for r in roles} <= set(distiller.state_dict())
        assert list(distiller.state_dict())[-1].startswith("kd_method.heads.")  # after the network
        trainable = {id(p) for g in distiller.param_groups(5e-4) for p in g["params"]}
        assert all(id(p) in trainable for p in distiller.kd_method.parameters())
        out = distiller.train()(x, y)
        assert {f"margin_{r}" for r in roles} <= set(out.losses)
        out.loss.backward()
        assert all(p.grad is not None for p in distiller.kd_method.parameters())
        outputs.append({k: float(v.detach()) for k, v in out.losses.items()})
    assert outputs[0] == outputs[1] == outputs[2]
    with pytest.raises(ArgumentError, match="unknown margin KD options \\['margn'\\]; use ce_weight, margin, weight"):
        Distiller(*small_pair(), MarginKD, kd_options={"margn": 1.0}, input_size=SIZE)
    with pytest.raises(ArgumentError, match="^margin KD option margin must be >= 0, got -1.0$"):
        MarginKD(MarginKDOptions(margin=-1.0))


def test_the_methods_ce_weight_weighs_the_ce_terms():
    student, teacher = small_pair()
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    distiller = Distiller(student, teacher, MarginKD, kd_options={"ce_weight": 0.25}, input_size=SIZE)
    assert distiller.ce_weight == 0.25
    with torch.no_grad():
        losses = distiller.eval()(x, y).losses
        plain = F.cross_entropy(distiller.student_logits(x), y)
    torch.testing.assert_close(losses["ce_student"], 0.25 * plain)


# ------------------------------------------------------------------------ the config and gpd train

TINY_RUN = [
    "data.name=digits", "data.train_subset=128", "data.test_subset=64", "train.batch_size=32",
    "train.eval_batch_size=64", "train.device=cpu", "train.threads=1", "train.deterministic=true",
    "teacher.model=resnet8", "train.epochs=1",
]  # fmt: skip


def test_the_config_takes_the_methods_own_section(tmp_path: Path):
    cfg = load_config(None, [f"kd.method={METHOD}", "margin_kd.margin=0.25", "margin_kd.weight=3", *TINY_RUN])
    section = cfg.margin_kd  # type: ignore[attr-defined]
    # the class the import path loaded (this file, imported once more by path), not pytest's MarginKDOptions
    assert cfg.kd.method == METHOD and dataclasses.asdict(section) == {"ce_weight": 1.0, "margin": 0.25, "weight": 3.0}
    written = yaml.safe_load(to_yaml(cfg))
    assert written["margin_kd"] == {"ce_weight": 1.0, "margin": 0.25, "weight": 3.0}
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"kd.method={METHOD}", "margin_kd.bogus=1", *TINY_RUN])
    assert str(err.value) == "unknown config key 'margin_kd.bogus'"
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"kd.method={METHOD}", "margin_kd.margin=-1", *TINY_RUN])
    assert str(err.value) == "margin_kd.margin must be >= 0, got -1.0"
    with pytest.raises(ConfigError, match="^unknown config key 'margin_kd'$"):
        load_config(None, ["margin_kd.margin=1"])  # the section comes with the method that kd.method selects
    relative = Path(*[".."] * len(Path.cwd().parts)) / str(THIS_FILE).lstrip("/")
    assert load_config(None, [f"kd.method={relative}:MarginKD", *TINY_RUN]).kd.method == METHOD  # made absolute
    path = tmp_path / "run.yaml"
    path.write_text(f"kd:\n  method: {METHOD}\nmargin_kd:\n  margin: 2.0\n")
    assert load_config(str(path), TINY_RUN).margin_kd.margin == 2.0  # type: ignore[attr-defined]


def test_gpd_train_runs_the_method_and_resumes(tmp_path: Path, capsys):
    run = tmp_path / "run"
    args = [f"kd.method={METHOD}", "margin_kd.margin=0.5", "margin_kd.weight=2.0", *TINY_RUN, f"output_dir={run}"]
    assert main(["train", *args]) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["loss_margin_student"]) > 0 and float(rows[0]["loss_margin_dynamic"]) > 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["kd"]["method"] == METHOD and config["margin_kd"]["margin"] == 0.5
    KD_METHODS.unregister("margin_kd")  # a fresh process: only the config names the method
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["loss_margin_student"]) > 0
    capsys.readouterr()
    assert main(["train", f"kd.method={METHOD}", "margin_kd.nope=1", *TINY_RUN, f"output_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert err == "gpd: error: unknown config key 'margin_kd.nope'\n"
