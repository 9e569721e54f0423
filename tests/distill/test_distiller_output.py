"""The output contract: logits_of (a model's output -> logits), total_loss (the one loss sum), and
a Distiller over models whose forward returns something other than a tensor."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from gpd.distill import Distiller, DistillerOutput, logits_of, total_loss
from gpd.errors import ArgumentError
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = (1, 28, 28)


@dataclass
class ModelOutputLike:
    """What transformers' ModelOutput offers: a ``logits`` attribute (and more)."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] = ()


def test_logits_of_each_kind_of_output():
    z = torch.randn(2, 3)
    assert logits_of(z) is z
    assert logits_of(ModelOutputLike(z)) is z
    assert logits_of({"logits": z, "aux": z + 1}) is z
    assert logits_of(OrderedDict(logits=z)) is z
    assert logits_of((z, z + 1)) is z and logits_of([z]) is z
    assert logits_of({"out": z}, logits_fn=lambda out: out["out"]) is z
    for bad in ({"out": z}, (), "text", None):
        with pytest.raises(ArgumentError, match=rf"type {type(bad).__name__}: pass logits_fn="):
            logits_of(bad)


def test_total_loss_is_the_plain_sum_in_order():
    terms = {"a": torch.tensor(0.1), "b": torch.tensor(1e8), "c": torch.tensor(-1e8)}
    assert torch.equal(total_loss(terms), sum(terms.values()))  # same rounding, same order
    assert float(total_loss({})) == 0.0
    out = DistillerOutput(terms, torch.zeros(2, 3))
    assert torch.equal(out.loss, total_loss(terms))


class DictOut(nn.Module):
    """A model whose forward returns a dict, as many libraries' models do."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: self.model(x)}


@pytest.mark.parametrize("key", ["logits", "scores"])
def test_a_distiller_over_models_that_return_a_dict(key: str):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10, 1), create_model("resnet14", 10, 1)
    x, y = torch.randn(4, *SIZE), torch.randint(0, 10, (4,))
    torch.manual_seed(1)
    reference = Distiller(student, teacher, "kd", input_size=SIZE).eval()
    logits_fn = None if key == "logits" else (lambda out: out["scores"])
    torch.manual_seed(1)
    wrapped = Distiller(DictOut(student, key), DictOut(teacher, key), "kd", example_input=x, logits_fn=logits_fn).eval()
    with torch.no_grad():
        a, b = reference(x, y), wrapped(x, y)
        assert torch.equal(b.student_logits, a.student_logits)
        assert a.losses.keys() == b.losses.keys() and all(torch.equal(a.losses[k], b.losses[k]) for k in a.losses)
        assert torch.equal(wrapped.dynamic_logits(x), reference.dynamic_logits(x))


def test_an_output_without_logits_is_a_one_line_error():
    torch.manual_seed(0)
    distiller = Distiller(DictOut(create_model("resnet8", 10, 1), "scores"), dynamic_teacher=False)
    with pytest.raises(ArgumentError, match="model output of type dict: pass logits_fn=") as err:
        distiller(torch.randn(2, *SIZE), torch.randint(0, 10, (2,)))
    assert "\n" not in str(err.value)
