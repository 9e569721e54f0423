"""Hugging Face transformers models through gpd's Python API, offline, on tiny random configs.

A text model takes a mapping (``input_ids``, ``attention_mask``, ...) as keyword arguments and
returns a ``ModelOutput``. Here: attention masks (D equals the student on padded batches), KD from
a larger transformers teacher, the verification of every output tensor, and the docs' example. Every
architecture's expansion, training steps, export and ``save_pretrained`` round trip:
tests/models/test_transformers_zoo.py.
"""

from __future__ import annotations

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


def _bert(hidden: int = 32, layers: int = 2, heads: int = 4) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=37, max_position_embeddings=24, type_vocab_size=2, num_labels=LABELS,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _logits(model: Any, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(call_model(model, batch))


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
