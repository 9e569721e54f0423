"""Hugging Face transformers models through gpd's Python API, offline, on tiny random configs.

A text model takes a mapping (``input_ids``, ``attention_mask``, ...) as keyword arguments and
returns a ``ModelOutput``; an image model takes a tensor. Each model expands exactly at r = 2,
trains three SGD steps in a Distiller, exports to its own class, and reloads from
``save_pretrained`` with the student view's logits. Sizes avoid coincidences between a
channel count and another axis (intermediate 37, 24 positions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gpd
from gpd.distill import logits_of
from gpd.inputs import call_model

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, LABELS = 50, 8, 3


def _text_batch(rows: int = 3, pad_rows: dict[int, int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids (never the pad id 0), an attention mask with rows padded from the given position, token types."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, SEQ), generator=generator)
    mask = torch.ones(rows, SEQ, dtype=torch.long)
    for row, start in (pad_rows if pad_rows is not None else {1: 5, 2: 3}).items():
        ids[row, start:] = 0
        mask[row, start:] = 0
    types = torch.zeros(rows, SEQ, dtype=torch.long)
    types[:, SEQ // 2 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _images(size: int) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


def _vit_kwargs() -> dict[str, Any]:
    return dict(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, num_labels=LABELS,
    )  # fmt: skip


def _bert(hidden: int = 32, layers: int = 2, heads: int = 4) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=37, max_position_embeddings=24, type_vocab_size=2, num_labels=LABELS,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=37, max_position_embeddings=24, num_labels=LABELS, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForSequenceClassification(config)


@dataclass(frozen=True)
class Case:
    """A model, its batch, and the class that loads its save_pretrained directory."""

    build: Callable[[], nn.Module]
    batch: Callable[[], Any]
    loader: str  # a transformers class name: an AutoModelFor... where it gives the model's own class


CASES: dict[str, Case] = {
    "vit": Case(
        lambda: transformers.ViTForImageClassification(transformers.ViTConfig(**_vit_kwargs())),
        lambda: _images(16),
        "AutoModelForImageClassification",
    ),
    "deit_distilled": Case(  # the class token's head and the distillation token's, averaged
        lambda: transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**_vit_kwargs())),
        lambda: _images(16),
        "DeiTForImageClassificationWithTeacher",
    ),
    "convnext": Case(
        lambda: transformers.ConvNextForImageClassification(
            transformers.ConvNextConfig(
                num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=LABELS
            )
        ),
        lambda: _images(32),
        "AutoModelForImageClassification",
    ),
    "bert": Case(_bert, _text_batch, "AutoModelForSequenceClassification"),
    "llama_gqa": Case(
        _llama,
        lambda: {k: v for k, v in _text_batch().items() if k != "token_type_ids"},
        "AutoModelForSequenceClassification",
    ),
}


def _logits(model: Any, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call_model(model, batch))


@pytest.mark.parametrize("name", list(CASES))
def test_the_expansion_is_exact(name: str) -> None:
    case = CASES[name]
    torch.manual_seed(0)
    model, batch = case.build().eval(), case.batch()
    expanded = gpd.expand(model, ratio=2, example_input=batch).eval()
    expected = _logits(model, batch)
    assert type(call_model(expanded.forward_dynamic, batch)) is type(call_model(model, batch))  # the ModelOutput
    torch.testing.assert_close(_logits(expanded.forward_dynamic, batch), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(expanded.forward_student, batch), expected, rtol=0, atol=1e-6)
    assert expanded.report.dynamic_error is not None and expanded.report.dynamic_error < 1e-5


@pytest.mark.parametrize("name", list(CASES))
def test_a_distiller_trains_exports_and_reloads(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    torch.manual_seed(0)
    model, batch = case.build(), case.batch()
    distiller = gpd.Distiller(model, ratio=2, example_input=batch)
    optimizer = torch.optim.SGD(distiller.param_groups(0.0), lr=0.05, momentum=0.9)
    targets = torch.arange(3) % LABELS
    distiller.train()
    for _ in range(3):
        out = distiller(batch, targets)
        assert set(out.losses) == {"ce_dynamic", "ce_student", "sce"}
        assert all(bool(torch.isfinite(v)) for v in out.losses.values()), out.losses
        assert out.student_logits.shape == (3, LABELS)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    distiller.eval()
    student = distiller.export_student()
    assert type(student) is type(model)
    student.save_pretrained(tmp_path)
    reloaded = getattr(transformers, case.loader).from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        view = distiller.student_logits(batch)  # a Distiller takes the batch as it is, a mapping included
    torch.testing.assert_close(_logits(reloaded, batch), view, rtol=0, atol=1e-5)


def test_the_dynamic_teacher_respects_the_attention_mask_of_a_padded_batch() -> None:
    """D equals the student on padded rows, and the tokens under a zero mask change nothing."""
    torch.manual_seed(0)
    model = _bert().eval()
    expanded = gpd.expand(model, ratio=2, example_input=_text_batch()).eval()
    other = _text_batch(rows=4, pad_rows={0: 2, 3: 6}, seed=1)  # other rows padded, at other places
    expected = _logits(model, other)
    torch.testing.assert_close(_logits(expanded.forward_dynamic, other), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(expanded.forward_student, other), expected, rtol=0, atol=1e-6)
    changed = {**other, "input_ids": other["input_ids"].clone()}
    changed["input_ids"][0, 2:] = 7  # tokens under the mask
    torch.testing.assert_close(_logits(expanded.forward_dynamic, changed), _logits(expanded.forward_dynamic, other))
    unmasked = {**other, "attention_mask": torch.ones_like(other["attention_mask"])}
    assert not torch.allclose(_logits(expanded.forward_dynamic, unmasked), _logits(expanded.forward_dynamic, other))


def test_kd_from_a_larger_transformers_teacher_trains_a_step() -> None:
    torch.manual_seed(0)
    teacher, student, batch = _bert(hidden=48, layers=3), _bert(), _text_batch()
    distiller = gpd.Distiller(student, teacher, kd="kd", ratio=2, example_input=batch)
    out = distiller(batch, torch.arange(3) % LABELS)
    assert {"kd_student", "kd_dynamic", "ce_student", "ce_dynamic", "sce"} <= set(out.losses)
    assert all(bool(torch.isfinite(v)) for v in out.losses.values())
    out.loss.backward()
    assert all(p.grad is None for p in distiller.static_teacher.parameters())  # type: ignore[union-attr]


def test_the_verification_compares_every_tensor_of_a_model_output() -> None:
    from gpd.expansion.verify import output_tensors, relative_error

    output = transformers.modeling_outputs.SequenceClassifierOutput(
        logits=torch.ones(2, 3), hidden_states=(torch.ones(2, 4), torch.ones(2, 4))
    )
    other = transformers.modeling_outputs.SequenceClassifierOutput(
        logits=torch.ones(2, 3), hidden_states=(torch.ones(2, 4), torch.full((2, 4), 1.5))
    )
    assert len(output_tensors(output)) == 3
    assert relative_error(output, output) == 0.0
    assert relative_error(other, output) == pytest.approx(0.5)


def test_the_example_of_docs_huggingface_runs() -> None:
    import re

    doc = Path(__file__).resolve().parents[2] / "docs" / "huggingface.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 1
    torch.manual_seed(0)
    exec(compile(blocks[0], "docs/huggingface.md", "exec"), {"__name__": "doc_example"})
