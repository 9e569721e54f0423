"""The transformers zoo (docs/architectures_transformers.md): coverage, and the API on every model that expands.

Each tiny random config of ``TRANSFORMERS_ZOO`` is exact at r = 2 (D, student view and strict
export equal the model on a fresh, differently padded batch) or refused with a one-line
``gpd.ExpansionError``; no other exception and no silent difference. At least 90% are exact.
Every exact model then trains three SGD steps from scratch in a Distiller, exports to its own
class, and reloads from ``save_pretrained`` with the student view's logits.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import gpd
from gpd.expansion.zoo import ZooResult, check_model
from gpd.inputs import call_model
from gpd.outputs import logits_of

transformers = pytest.importorskip("transformers")

from gpd.expansion.transformers_zoo import LABELS, TRANSFORMERS_ZOO  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")
BY_NAME = {spec.name: spec for spec in TRANSFORMERS_ZOO}
VISION = [
    "ViT", "DeiT", "BEiT", "Swin", "Swinv2", "ConvNeXt", "ConvNeXt-V2", "ResNet", "RegNet", "EfficientNet",
    "MobileNetV2", "MobileViT", "LeViT", "DINOv2",
]  # fmt: skip
TEXT = [
    "BERT", "RoBERTa", "DistilBERT", "ALBERT", "ELECTRA", "DeBERTa-v2", "ModernBERT", "GPT-2", "Llama", "Mistral",
    "Qwen2", "Qwen3", "Phi-3", "Gemma",
]  # fmt: skip


@functools.cache
def _result(name: str) -> ZooResult:
    return check_model(BY_NAME[name], 2)  # any exception but ExpansionError fails the caller


def test_the_zoo_holds_every_architecture_of_the_coverage_table() -> None:
    assert sorted(spec.family for spec in TRANSFORMERS_ZOO) == sorted(VISION + TEXT)
    assert len(BY_NAME) == len(TRANSFORMERS_ZOO)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_model_is_exact_or_refused_by_name(name: str) -> None:
    result = _result(name)
    if result.exact:
        assert max(result.dynamic_error, result.student_error, result.export_error) <= 1e-4
    else:
        assert result.reason.startswith("layer '") or "layer '" in result.reason, result.reason
        assert "\n" not in result.reason, result.reason
        assert not result.reason.startswith("differs on a fresh input"), result.reason  # silently different


def test_at_least_90_percent_expand_exactly() -> None:
    exact = [name for name in BY_NAME if _result(name).exact]
    refused = {name: _result(name).reason[:120] for name in BY_NAME if name not in exact}
    assert len(exact) >= 0.9 * len(BY_NAME), refused


def _targets(batch: object) -> torch.Tensor:
    rows = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)  # type: ignore[arg-type]
    return torch.arange(rows) % LABELS


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_distiller_trains_three_steps_exports_its_class_and_reloads(name: str, tmp_path: Path) -> None:
    if not _result(name).exact:
        pytest.skip(f"{name} is refused: {_result(name).reason[:80]}")
    spec = BY_NAME[name]
    torch.manual_seed(0)
    model, batch = spec.factory(), spec.batch(0)
    distiller = gpd.Distiller(model, ratio=2, example_input=batch)
    optimizer = torch.optim.SGD(distiller.param_groups(0.0), lr=0.05, momentum=0.9)
    distiller.train()
    for _ in range(3):
        out = distiller(batch, _targets(batch))
        assert all(bool(torch.isfinite(v)) for v in out.losses.values()), out.losses
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    distiller.eval()
    student = distiller.export_student()
    assert type(student) is type(model)
    student.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    fresh = spec.batch(7)
    with torch.no_grad():
        view = distiller.student_logits(fresh)
        torch.testing.assert_close(
            logits_of(call_model(reloaded, fresh)), view, rtol=1e-5, atol=1e-5
        )  # float32 rounding
