"""gpd.integrations.timm.GPDTask, tested as timm tests its own tasks: a step, DDP on gloo, state round trips."""

from __future__ import annotations

import copy
import socket

import pytest
import timm
import torch
import torch.distributed as dist
from timm.task import TrainingTask

from gpd.integrations.timm import GPDTask, StudentForward

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SIZE = (1, 32, 32)


def timm_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=10, in_chans=1)


def batch(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_param_groups_decay_norms_and_biases_as_the_distiller_does() -> None:
    """The task's groups are the Distiller's: timm's rule by default, every tensor with the paper's CNN recipe."""
    task = GPDTask(timm_resnet18(), ratio=2, input_size=SIZE)
    every = task.param_groups(1e-4, decay_norms_and_biases=True)
    assert [g["weight_decay"] for g in every] == [1e-4]
    assert len(every[0]["params"]) == len([p for p in task.distiller.parameters() if p.requires_grad])
    assert [g["weight_decay"] for g in task.param_groups(1e-4)] == [0.0, 1e-4]


def test_a_few_steps_of_a_timm_resnet18_in_a_plain_loop() -> None:
    task = GPDTask(timm_resnet18(), ratio=2, input_size=SIZE)
    assert isinstance(task, TrainingTask)
    optimizer = torch.optim.SGD(task.param_groups(weight_decay=1e-4), lr=0.05, momentum=0.9)
    x, y = batch()
    losses = []
    for _ in range(5):  # one batch, again and again: the loss must fall
        result = task(x, y)
        assert set(result) == {"loss", "output", "ce_dynamic", "ce_student", "sce"}
        assert result["output"].shape == (8, 10)
        optimizer.zero_grad()
        result["loss"].backward()
        task.clip_grad_norm_(5.0)
        optimizer.step()
        losses.append(float(result["loss"].detach()))
    assert losses[-1] < losses[0]
    with torch.no_grad():
        task.eval()
        assert torch.allclose(task.get_eval_model()(x), task.export_student()(x), atol=1e-5)


def test_checkpoint_state_holds_d_and_round_trips() -> None:
    task = GPDTask(timm_resnet18(), ratio=2, input_size=SIZE)
    optimizer = torch.optim.SGD(task.param_groups(0.0), lr=0.05)
    x, y = batch()
    task(x, y)["loss"].backward()
    optimizer.step()
    state = task.get_checkpoint_state()
    assert any(k.startswith("pair.dynamic.") for k in state["state_dict"])  # D is in the checkpoint
    other = GPDTask(timm_resnet18(), ratio=2, input_size=SIZE)  # same init, but not the step
    other.load_checkpoint_state(state["state_dict"], state.get("task_state"))
    task.eval()
    other.eval()
    with torch.no_grad():
        assert torch.equal(other.get_eval_model()(x), task.get_eval_model()(x))
        assert torch.equal(other.distiller.dynamic_logits(x), task.distiller.dynamic_logits(x))


def test_ema_state_round_trips() -> None:
    task = GPDTask(timm_resnet18(), ratio=2, input_size=SIZE)
    task.setup_ema(decay=0.5)
    optimizer = torch.optim.SGD(task.param_groups(0.0), lr=0.05)
    x, y = batch()
    task(x, y)["loss"].backward()
    optimizer.step()
    task.update_ema(step=1)
    state = task.get_checkpoint_state(ema=True)
    assert set(state) >= {"state_dict_ema"}
    other = GPDTask(timm_resnet18(), ratio=2, input_size=SIZE)
    other.setup_ema(decay=0.5)
    other.load_checkpoint_state(state["state_dict_ema"], state.get("task_state_ema"), ema=True)
    with torch.no_grad():
        a, b = task.get_eval_model(ema=True).eval(), other.get_eval_model(ema=True).eval()
        assert isinstance(a, StudentForward) and torch.equal(a(x), b(x))


def test_reviewkd_heads_are_task_state() -> None:
    torch.manual_seed(0)
    teacher = timm.create_model("resnet34", num_classes=10, in_chans=1)
    task = GPDTask(timm_resnet18(), teacher, kd="reviewkd", ratio=2, input_size=SIZE)
    x, y = batch()
    assert {"reviewkd_student", "reviewkd_dynamic"} <= set(task(x, y))
    state = task.get_task_state()
    assert set(state) == {"kd_method"} and all(k.startswith("heads.") for k in state["kd_method"])
    other = GPDTask(timm_resnet18(), copy.deepcopy(teacher), kd="reviewkd", ratio=2, input_size=SIZE)
    other.load_task_state(state)
    for a, b in zip(task.distiller.kd_method.parameters(), other.distiller.kd_method.parameters(), strict=True):
        assert torch.equal(a, b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_wrap_on_gloo() -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        task = GPDTask(timm_resnet18(), ratio=2, input_size=SIZE)
        reference = copy.deepcopy(task)
        task.prepare_distributed()
        x, y = batch()
        task(x, y)["loss"].backward()
        reference(x, y)["loss"].backward()
        for a, b in zip(task.distiller.parameters(), reference.distiller.parameters()):
            if a.grad is not None:
                assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
        assert isinstance(task.get_eval_model(), StudentForward)
        assert not any(k.startswith("module.") for k in task.get_checkpoint_state()["state_dict"])
    finally:
        dist.destroy_process_group()
