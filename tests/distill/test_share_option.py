"""gpd.share=false: D built by IR, then trained with parameters separate from the student's."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import gpd
from gpd.cli.main import main
from gpd.config import load_config
from gpd.distill.pair import DynamicPair, UnsharedPair
from gpd.errors import ArgumentError
from gpd.models import create_model
from helpers import needs_fashion_mnist

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = (1, 28, 28)


def small_pair(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("resnet8", 10, 1), create_model("resnet20", 10, 1)


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


def unshared(student, **kwargs) -> gpd.Distiller:
    return gpd.Distiller(student, input_size=SIZE, share_parameters=False, **kwargs)


def test_unshared_pair_starts_with_d_equal_to_the_student():
    student, _ = small_pair()
    distiller = unshared(student, noise_std=0.0).eval()  # exact copies (the default noise perturbs D by ~1e-3)
    assert isinstance(distiller.network, UnsharedPair) and isinstance(distiller.network, DynamicPair)
    assert not distiller.shares_parameters
    x, _ = batch()
    with torch.no_grad():
        expected = student.eval()(x)
        assert torch.allclose(distiller.student_logits(x), expected, atol=1e-5)
        assert torch.allclose(distiller.dynamic_logits(x), expected, rtol=1e-4, atol=1e-4)
    # separate tensors: no storage in common between D and the student
    d_ptrs = {p.data_ptr() for p in distiller.network.dynamic.parameters()}
    s_params = list(distiller.network.student.parameters())
    assert s_params and not d_ptrs & {p.data_ptr() for p in s_params}
    # both are trained: the optimizer sees D's and the student's parameters
    trainable = {id(p) for p in distiller.parameters()}
    assert {id(p) for p in s_params} <= trainable
    assert {id(p) for p in distiller.network.dynamic.parameters()} <= trainable


def test_same_loss_terms_as_the_shared_pair():
    student, _ = small_pair()
    x, y = batch()
    shared = gpd.Distiller(student, input_size=SIZE).eval()
    separate = unshared(student).eval()
    with torch.no_grad():
        a, b = shared(x, y).losses, separate(x, y).losses
    assert set(a) == set(b) == {"ce_dynamic", "ce_student", "sce"}
    for name in a:  # the same function at init, hence the same losses
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name


def test_after_a_step_the_student_is_no_longer_a_slice_of_d():
    student, _ = small_pair()
    distiller = unshared(student).train()
    pair = distiller.network
    conv_s, conv_d = pair.student.layer1[0].conv2.weight, pair.dynamic.layer1[0].conv2.weight
    c_out, c_in = conv_s.shape[:2]

    def block0_scaled() -> torch.Tensor:  # where the shared student would read its weights: r * D[:C, :C]
        return 2.0 * conv_d[:c_out, :c_in]

    assert torch.allclose(conv_s, block0_scaled(), atol=1e-6)  # IR: the student is D's block 0 at init
    s_before, d_before = conv_s.detach().clone(), conv_d.detach().clone()
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.1)
    x, y = batch(16)
    distiller(x, y).loss.backward()
    assert conv_s.grad is not None and conv_d.grad is not None
    optimizer.step()
    assert not torch.equal(conv_s, s_before) and not torch.equal(conv_d, d_before)  # both moved
    assert not torch.allclose(conv_s, block0_scaled(), atol=1e-6)  # ... independently
    # gradients of the student's loss stay out of D: SCE stops at D's logits, CE(S) does not touch D
    distiller.zero_grad(set_to_none=True)
    distiller(x, y).losses["ce_student"].backward()
    assert all(p.grad is None for p in pair.dynamic.parameters())


def test_export_gives_the_student_modules_weights():
    student, _ = small_pair()
    distiller = unshared(student, branches="orepa").train()
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.05)
    x, y = batch(16)
    for _ in range(2):
        optimizer.zero_grad()
        distiller(x, y).loss.backward()
        optimizer.step()
    distiller.eval()
    exported = distiller.export_student()
    assert type(exported) is type(student)
    fresh = create_model("resnet8", 10, 1)
    fresh.load_state_dict(exported.state_dict(), strict=True)  # branches merged into plain convs
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), distiller.student_logits(x), rtol=1e-4, atol=1e-4)
    dynamic = distiller.network.export_dynamic()
    with torch.no_grad():
        assert torch.allclose(dynamic.eval()(x), distiller.dynamic_logits(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["dkd", "reviewkd"])
def test_kd_methods_work_with_separate_parameters(method):
    student, teacher = small_pair()
    distiller = gpd.Distiller(student, teacher, kd=method, input_size=SIZE, share_parameters=False).train()
    x, y = batch(8)
    losses = distiller(x, y, epoch=30.0).losses
    term = "reviewkd" if method == "reviewkd" else "kd"
    assert set(losses) == {"ce_student", "ce_dynamic", "sce", f"{term}_student", f"{term}_dynamic"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in distiller.network.student.parameters())
    assert all(p.grad is not None for p in distiller.network.dynamic.parameters())
    if method == "reviewkd":
        widths = {
            role: [abf.reduce[0].in_channels for abf in head.abfs] for role, head in distiller.kd_method.heads.items()
        }
        assert widths == {"student": [16, 32, 64, 64], "dynamic": [32, 64, 128, 128]}  # stages + pooled level


def test_config_option_and_validation():
    assert load_config(None, []).gpd.share is True
    assert load_config(None, ["gpd.share=false"]).gpd.share is False
    with pytest.raises(gpd.ConfigError, match="gpd.share"):
        load_config(None, ["gpd.share=maybe"])
    with pytest.raises(gpd.ConfigError, match="gpd.enabled=true"):
        load_config(None, ["gpd.share=false", "gpd.enabled=false"])


@needs_fashion_mnist
def test_cli_run_with_separate_parameters(tmp_path: Path, capsys):
    run_dir = tmp_path / "unshared"
    args = ["data.train_subset=512", "data.test_subset=256", "train.epochs=1", "train.batch_size=64", "gpd.share=false"]
    assert main(["train", f"output_dir={run_dir}", *args]) == 0
    assert "separate parameters (gpd.share=false)" in capsys.readouterr().out
    row = list(csv.DictReader(open(run_dir / "metrics.csv")))[-1]
    assert row["dynamic_acc"] != "" and "loss_sce" in row
    payload = torch.load(run_dir / "student.pt", weights_only=True)
    fresh = create_model("resnet8", 10, 1)
    fresh.load_state_dict(payload["state_dict"], strict=True)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert any(k.startswith("network.student.") and k.endswith("weight") for k in saved)  # the student's own weights
    assert torch.equal(payload["state_dict"]["fc.weight"], saved["network.student.fc.weight"])


def test_step_rule_option_and_validation():
    assert load_config(None, []).gpd.step_rule == "paper"
    assert load_config(None, ["gpd.step_rule=plain"]).gpd.step_rule == "plain"
    for conflicting in ("gpd.share=false", "gpd.enabled=false"):
        with pytest.raises(gpd.ConfigError, match="gpd.step_rule=plain .* needs gpd.enabled=true and gpd.share=true"):
            load_config(None, ["gpd.step_rule=plain", conflicting])
    with pytest.raises(gpd.ConfigError, match="gpd.step_rule must be paper or plain, got 'wide'"):
        load_config(None, ["gpd.step_rule=wide"])
    student, _ = small_pair()
    with pytest.raises(
        ArgumentError, match="step_rule='plain' .* needs dynamic_teacher=True and share_parameters=True"
    ):
        gpd.Distiller(student, input_size=SIZE, share_parameters=False, step_rule="plain")
    with pytest.raises(ArgumentError, match="step_rule must be paper or plain, got 'wide'"):
        gpd.Distiller(student, input_size=SIZE, step_rule="wide")  # type: ignore[arg-type]


@needs_fashion_mnist
def test_cli_run_with_the_r2_step_removed(tmp_path: Path, capsys):
    run_dir = tmp_path / "compensated"
    args = ["data.train_subset=512", "data.test_subset=256", "train.epochs=1", "train.batch_size=64"]
    assert main(["train", f"output_dir={run_dir}", *args, "gpd.step_rule=plain"]) == 0
    assert "plain networks' steps (gpd.step_rule=plain)" in capsys.readouterr().out
    assert (run_dir / "student.pt").is_file()
