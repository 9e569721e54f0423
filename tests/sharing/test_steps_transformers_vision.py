"""Per-layer SGD steps on transformers' per-head tensors, predicted by hand and measured in float64.

The new kinds (docs/method.md, "Per-layer steps"): relative position bias tables (BEiT),
per-head logit scales and the continuous position bias MLP (Swinv2), attention biases
(LeViT). They live inside the attention core, which the paper's layout keeps at the
student's scale, and none reads an expanded axis, so the paper's D stores them tiled as
gpd's does: a = 1, the student reads its block (c = 1), and every factor is 1 under both
step rules. The other tensors of the same models keep the factors of tests/sharing/test_steps.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

import gpd
from gpd.outputs import logits_of
from helpers import dynamic_factor, hf_vision_model, rel_err, student_factor

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("torch_single_thread")

LR = 0.05
HEAD_TENSORS = ("relative_position_bias_table", "logit_scale", "continuous_position_bias_mlp", "attention_biases")


def kind_of(name: str) -> str:
    """The kind of a parameter of the tiny BEiT, Swinv2 or LeViT (by its name, derived on paper)."""
    if any(part in name for part in HEAD_TENSORS):
        return "per_head"
    if name.startswith("classifier."):
        return "head_bias" if name.endswith("linear.bias") or name == "classifier.bias" else (
            "norm" if "batch_norm" in name else "head"
        )  # fmt: skip
    if "patch_embeddings.projection" in name or "embedding_layer_1.convolution" in name:
        return "stem" if name.endswith("weight") else "expanded_bias"
    if name.endswith("cls_token"):
        return "token"
    if "lambda_" in name:
        return "layer_scale"
    if "norm" in name:
        return "norm"
    return "middle" if name.endswith("weight") else "expanded_bias"


def assert_step(moved: torch.Tensor, predicted: torch.Tensor, what: tuple[str, str]) -> None:
    """A gradient that is zero up to rounding (a bias that the next BatchNorm cancels) moves nothing."""
    if float(predicted.abs().max()) < 1e-15:
        assert float(moved.detach().abs().max()) < 1e-15, what
    else:
        assert rel_err(moved, predicted) <= 1e-9, what


def make(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """In eval mode (no dropout or drop path, fixed BatchNorm statistics), but LeViT in train mode:
    in eval mode it reads its attention biases from a cache that no gradient reaches."""
    model, size = hf_vision_model(name)
    model = model.double().train(name == "levit")
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, x, torch.arange(4) % 3


def expand(model: torch.nn.Module, rule: str, x: torch.Tensor) -> gpd.GPDModel:
    return gpd.expand(model, 2, example_input=x, step_rule=rule).train(model.training)


@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("name", ["beit", "swinv2", "levit"])
def test_student_step_per_kind(name: str, rule: str) -> None:
    student, x, y = make(name)
    plain = copy.deepcopy(student)
    F.cross_entropy(logits_of(plain(x)), y).backward()
    model = expand(student, rule, x)
    before = {n: p.detach().clone() for n, p in model.student_parameters().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(logits_of(model.forward_student(x)), y).backward()
    optimizer.step()
    after = model.student_parameters()
    kinds = set()
    for param_name, param in plain.named_parameters():
        kind = kind_of(param_name)
        kinds.add(kind)
        predicted = -LR * student_factor(kind, 2, rule) * param.grad
        assert_step(after[param_name] - before[param_name], predicted, (param_name, kind))
    assert "per_head" in kinds


@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize("name", ["beit", "swinv2", "levit"])
def test_dynamic_teacher_step_per_kind(name: str, rule: str) -> None:
    student, x, y = make(name)
    model = expand(student, rule, x)
    plain_d = copy.deepcopy(model.dynamic)  # a plain wide network: a deepcopy of the module carries no hooks
    F.cross_entropy(logits_of(plain_d(x)), y).backward()
    plain_grads = {n: p.grad for n, p in plain_d.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.dynamic.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    F.cross_entropy(logits_of(model.forward_dynamic(x)), y).backward()
    optimizer.step()
    for param_name, param in model.dynamic.named_parameters():
        predicted = -LR * dynamic_factor(kind_of(param_name), 2, rule) * plain_grads[param_name]
        assert_step(param.detach() - before[param_name], predicted, (param_name, kind_of(param_name)))


def test_per_head_tensors_have_paper_scale_one() -> None:
    student, x, _ = make("swinv2")
    slices = expand(student, "paper", x).student.slices
    per_head = [name for name in slices if kind_of(name) == "per_head"]
    assert per_head and all(slices[name].paper_scale == 1.0 for name in per_head)
