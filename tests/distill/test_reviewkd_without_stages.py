"""ReviewKD fuses the feature maps of CNN stages: a student and teacher without them (transformers'
BERT, a timm ViT, a plain torch token classifier) are refused when the Distiller is built, with one line that
says why and names the KD methods that work on logits alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpd
from gpd.errors import ArgumentError
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SUGGESTION = 'use kd="kd" or kd="dkd" for this pair'


def _refusal(student: nn.Module, teacher: nn.Module, **kwargs) -> str:
    with pytest.raises(ArgumentError) as info:
        gpd.Distiller(student, teacher, kd="reviewkd", ratio=2, **kwargs)
    message = str(info.value)
    assert "\n" not in message and SUGGESTION in message, message
    return message


def test_a_bert_pair_is_refused() -> None:
    transformers = pytest.importorskip("transformers")

    def bert(hidden: int) -> nn.Module:
        config = transformers.BertConfig(
            vocab_size=50, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=24, num_labels=3,
        )  # fmt: skip
        return transformers.BertForSequenceClassification(config)

    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(1, 50, (3, 8)), "attention_mask": torch.ones(3, 8, dtype=torch.long)}
    message = _refusal(bert(32), bert(48), example_input=batch)
    assert "the student (BertForSequenceClassification) has no stages" in message


def test_a_timm_vit_pair_is_refused() -> None:
    torch.manual_seed(0)
    kwargs = dict(num_classes=10, in_chans=3, img_size=32, patch_size=8, depth=2, num_heads=2)
    student = create_model("timm:vit_tiny_patch16_224", embed_dim=48, **kwargs)
    teacher = create_model("timm:vit_tiny_patch16_224", embed_dim=96, **kwargs)
    message = _refusal(student, teacher, input_size=(3, 32, 32))
    assert "ReviewKD fuses feature maps (N, C, H, W)" in message and "(tokens?)" in message


class TokenClassifier(nn.Module):
    """A token classifier in plain torch (a transformer block's residual MLP, no attention): no stages."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, width)
        self.mix = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(input_ids)
        return self.head(self.norm(tokens + self.mix(tokens)).mean(1))


def test_a_torch_token_classifier_pair_is_refused_without_a_dynamic_teacher_too() -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (3, 8))
    for dynamic in (True, False):
        message = _refusal(TokenClassifier(16), TokenClassifier(32), example_input=ids, dynamic_teacher=dynamic)
        assert "the student (TokenClassifier) has no stages" in message
