"""A batch's input is a tensor (passed positionally) or a mapping (passed as keyword arguments),
and a model's output may be a dict of tensors: the expansion, the Distiller and evaluation take
both (gpd.inputs), without transformers installed."""

from __future__ import annotations

import torch
from torch import nn

import gpd
from gpd.expansion.examples import example_of, with_extra_samples
from gpd.inputs import ModelInput, call_model, model_input, to_device
from gpd.training.evaluate import correct_counts


class KeywordNet(nn.Module):
    """Takes ``pixel_values=`` and an optional ``scale=`` (a float tensor), returns a dict as transformers do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, *, pixel_values: torch.Tensor, scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = torch.relu(self.conv(pixel_values))
        if scale is not None:
            x = x * scale.view(-1, 1, 1, 1)
        features = x.mean((2, 3))
        return {"logits": self.head(features), "pooled": features}


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(2, 3, 8, 8, generator=generator), "scale": torch.tensor([1.0, 2.0])}


def test_a_mapping_is_passed_as_keyword_arguments() -> None:
    batch = _batch()
    assert model_input(batch) == ModelInput((), batch)
    assert model_input(batch["scale"]).args[0] is batch["scale"]
    assert call_model(lambda **kw: sorted(kw), batch) == ["pixel_values", "scale"]
    assert call_model(lambda x: x, batch["scale"]) is batch["scale"]
    assert to_device(batch, "cpu").keys() == batch.keys()


def test_a_float_mapping_gets_extra_samples_and_an_integer_one_is_kept() -> None:
    example = example_of(nn.Identity(), _batch(), None)
    extended = with_extra_samples(example, 3, seed=1)
    assert {k: v.shape[0] for k, v in extended.kwargs.items()} == {"pixel_values": 5, "scale": 5}
    text = example_of(nn.Identity(), {"input_ids": torch.ones(2, 4, dtype=torch.long)}, None)
    assert with_extra_samples(text, 3, seed=1) is text


def test_expand_and_a_distiller_take_a_mapping_and_read_the_logits_of_a_dict() -> None:
    torch.manual_seed(0)
    model, batch = KeywordNet().eval(), _batch()
    expanded = gpd.expand(model, ratio=2, example_input=batch).eval()
    with torch.no_grad():
        expected = model(**batch)
        for run in (expanded.forward_dynamic, expanded.forward_student):
            got = run(**batch)
            for key in ("logits", "pooled"):
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
    distiller = gpd.Distiller(model, ratio=2, example_input=batch)
    out = distiller(batch, torch.tensor([0, 3]))
    assert out.student_logits.shape == (2, 4) and bool(torch.isfinite(out.loss))
    correct, total = correct_counts({"student": expanded.forward_student}, [(batch, expected["logits"].argmax(-1))],
                                    torch.device("cpu"))  # fmt: skip
    assert int(correct["student"]) == 2 and int(total) == 2
