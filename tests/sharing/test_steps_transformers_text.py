"""Per-layer SGD steps of the transformers text kinds, predicted by hand and measured (float64).

As tests/sharing/test_steps.py, for the kinds the text architectures add (docs/method.md,
"Per-layer steps"): embedding tables (word, position, token type; GPT-2's wte/wpe) write
activations from indices as a stem writes them from the image, so the paper's layout stores
them ``/ r`` (a = 1/r); RMSNorm (Gemma's ``1 + w`` included) is a norm wrapped by its scales
(a = 1); GPT-2's Conv1D, grouped-query k/v projections and the fused qkv/gate_up projections
are middle layers (W/r blocks, a = 1; their biases b/r, a = 1/r); Qwen3's q_norm/k_norm over
the head size is kept unexpanded in both layouts inside the wrapped attention core (a = 1):
its gradient in D sums over r times the heads, each reached through the ``W / r`` of the
output projection, which is the student's gradient, so it takes the plain step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

import gpd
from gpd.inputs import call_model
from gpd.outputs import logits_of
from helpers import TEXT_LABELS, dynamic_factor, rel_err, student_factor, text_batch, text_model

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("torch_single_thread")

LR = 0.05
NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}


def kind_of(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    if name.startswith(("classifier.", "score.")):
        return "head" if last == "weight" else "head_bias"
    if (
        ("embeddings." in name and "LayerNorm" not in name)
        or ".embed_tokens." in name
        or ".wte." in name
        or ".wpe." in name
    ):
        return "embedding"
    if ".q_norm." in name or ".k_norm." in name:
        return "head_norm"
    if "norm" in name.lower() or ".ln_" in name:
        return "norm"
    return "middle" if last == "weight" else "expanded_bias"  # q/k/v (GQA), fused qkv/gate_up, Conv1D, MLP


EXPECTED_KINDS = {
    "bert": {"embedding", "norm", "middle", "expanded_bias", "head", "head_bias"},
    "gpt2": {"embedding", "norm", "middle", "expanded_bias", "head"},
    "llama": {"embedding", "norm", "middle", "head"},
    "qwen3": {"embedding", "norm", "middle", "expanded_bias", "head_norm", "head"},
    "gemma": {"embedding", "norm", "middle", "head"},
    "phi3": {"embedding", "norm", "middle", "head"},
}
CASES = [(arch, 2) for arch in EXPECTED_KINDS] + [("gpt2", 3), ("qwen3", 3)]


def setup(arch: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    overrides: dict[str, object] = dict(NO_DROPOUT.get(arch, {}))
    if arch == "qwen3":
        overrides["attention_bias"] = True
    student = text_model(arch, **overrides)
    return student, text_batch(arch), torch.randint(0, TEXT_LABELS, (3,), generator=torch.Generator().manual_seed(1))


def has_gradient(grad: torch.Tensor | None) -> bool:
    """False for a position the batch never uses and for a key bias (softmax ignores it: rounding only)."""
    return grad is not None and float(grad.abs().max()) > 1e-12


def loss(model: object, batch: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_of(call_model(model, batch)), y)  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize(("arch", "r"), CASES)
def test_student_step_per_text_kind(arch: str, r: int, rule: str) -> None:
    student, batch, y = setup(arch)
    plain = copy.deepcopy(student)
    loss(plain, batch, y).backward()
    model = gpd.expand(student, r, example_input=batch, step_rule=rule).eval()
    before = {n: p.detach().clone() for n, p in model.student_parameters().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss(model.forward_student, batch, y).backward()
    optimizer.step()
    after = model.student_parameters()
    kinds = set()
    for name, param in plain.named_parameters():
        if not has_gradient(param.grad):
            continue
        kinds.add(kind_of(name))
        predicted = -LR * student_factor(kind_of(name), r, rule) * param.grad
        assert rel_err(after[name] - before[name], predicted) <= 1e-9, (name, kind_of(name))
    assert kinds == EXPECTED_KINDS[arch]


@pytest.mark.parametrize("rule", ["paper", "plain"])
@pytest.mark.parametrize(("arch", "r"), CASES)
def test_dynamic_teacher_step_per_text_kind(arch: str, r: int, rule: str) -> None:
    student, batch, y = setup(arch)
    model = gpd.expand(student, r, example_input=batch, step_rule=rule).eval()
    plain_d = copy.deepcopy(model.dynamic)  # a plain wide network: the deep copy carries no hooks
    loss(plain_d, batch, y).backward()
    plain_grads = {n: p.grad for n, p in plain_d.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.dynamic.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss(model.forward_dynamic, batch, y).backward()
    optimizer.step()
    for name, param in model.dynamic.named_parameters():
        if not has_gradient(plain_grads[name]):
            continue
        predicted = -LR * dynamic_factor(kind_of(name), r, rule) * plain_grads[name]
        assert rel_err(param.detach() - before[name], predicted) <= 1e-9, (name, kind_of(name))


def test_head_norm_gradient_in_d_is_the_students() -> None:
    """Qwen3's q_norm is applied to r·H heads in D; each head's gradient arrives through o_proj's
    W/r, so the sum over the copies is the student's own gradient."""
    student, batch, y = setup("qwen3")
    plain = copy.deepcopy(student)
    loss(plain, batch, y).backward()
    model = gpd.expand(student, 2, example_input=batch).eval()
    loss(model.forward_dynamic, batch, y).backward()
    name = "model.layers.0.self_attn.q_norm.weight"
    assert rel_err(model.dynamic.get_parameter(name).grad, plain.get_parameter(name).grad) <= 1e-9
