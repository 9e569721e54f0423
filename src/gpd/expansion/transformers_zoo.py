"""The zoo of Hugging Face transformers classifiers that gpd's expansion is measured on.

Tiny random configs of the architectures people keep in ``transformers`` (docs/huggingface.md,
"Coverage"), built offline: nothing is downloaded. Sizes avoid coincidences that would make
a test pass by accident (hidden 32, intermediate 37, 24 positions, 4 heads of 8). Text models
take a mapping of ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` where the model
has token types) with padded rows; vision models take ``pixel_values`` as one tensor.
:func:`gpd.expansion.zoo.check_model` runs the same three checks as on the torchvision/timm
zoo, on weights at unit scale (:func:`gpd.testing.unit_scale_weights`: at transformers' own
init, std 0.02, attention is nearly uniform and a wrong head layout hides below any tolerance).
``scripts/architectures_report.py --zoo transformers`` writes the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gpd.expansion.zoo import ZooModel

VOCAB, SEQ, LABELS = 50, 8, 3
HIDDEN: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
VIT: dict[str, Any] = dict(image_size=16, patch_size=4, num_channels=3, **HIDDEN)
SMALL_CNN: dict[str, Any] = dict(hidden_sizes=[8, 16], depths=[1, 1])
SWIN: dict[str, Any] = dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)


def text_batch(seed: int, token_types: bool = False, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Three rows of token ids; rows 1 and 2 are padded (ids ``pad_id`` under a zero mask) at
    positions that depend on the seed, so a fresh batch pads elsewhere than the expansion's."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, SEQ), generator=generator)
    mask = torch.ones(3, SEQ, dtype=torch.long)
    for row, start in ((1, 3 + seed % 4), (2, 2 + seed % 3)):
        ids[row, start:] = pad_id
        mask[row, start:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        types = torch.zeros(3, SEQ, dtype=torch.long)
        types[:, SEQ // 2 :] = 1
        batch["token_type_ids"] = types
    return batch


def image_batch(size: int) -> Callable[[int], torch.Tensor]:
    """Eight random images: BatchNorm trained on two (LeViT's last stage has one token per image)
    leaves running statistics that blow the eval-mode logits up to 1e7, with or without GPD."""

    def batch(seed: int) -> torch.Tensor:
        return torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed))

    return batch


def _factory(config_class: str, model_class: str, settings: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_class)(num_labels=LABELS, **settings)
        model: nn.Module = getattr(transformers, model_class)(config)
        return model

    return build


def _text(
    name: str, family: str, kind: str, *, token_types: bool = False, pad_id: int = 0, **settings: Any
) -> ZooModel:
    base: dict[str, Any] = dict(vocab_size=VOCAB, max_position_embeddings=24, pad_token_id=pad_id, **HIDDEN)
    base.update(settings)
    factory = _factory(f"{kind}Config", f"{kind}ForSequenceClassification", base)
    return ZooModel(
        name,
        family,
        factory,
        example=lambda seed: text_batch(seed, token_types, pad_id),
        input_label=f"{SEQ} tokens",
        unit_scale=True,
    )


def _vision(name: str, family: str, kind: str, size: int, model_class: str = "", **settings: Any) -> ZooModel:
    factory = _factory(f"{kind}Config", model_class or f"{kind}ForImageClassification", settings)
    return ZooModel(name, family, factory, (3, size, size), example=image_batch(size), unit_scale=True)


TRANSFORMERS_ZOO: list[ZooModel] = [
    # vision
    _vision("hf:vit", "ViT", "ViT", 16, **VIT),
    _vision("hf:deit", "DeiT", "DeiT", 16, "DeiTForImageClassificationWithTeacher", **VIT),
    _vision("hf:beit", "BEiT", "Beit", 16, use_relative_position_bias=True, **VIT),
    _vision("hf:swin", "Swin", "Swin", 32, **SWIN),
    _vision("hf:swinv2", "Swinv2", "Swinv2", 32, **SWIN),
    _vision("hf:convnext", "ConvNeXt", "ConvNext", 32, num_stages=2, **SMALL_CNN),
    _vision("hf:convnextv2", "ConvNeXt-V2", "ConvNextV2", 32, num_stages=2, **SMALL_CNN),
    _vision("hf:resnet", "ResNet", "ResNet", 32, embedding_size=8, layer_type="basic", **SMALL_CNN),
    _vision("hf:regnet", "RegNet", "RegNet", 32, embedding_size=8, groups_width=4, **SMALL_CNN),
    _vision(
        "hf:efficientnet", "EfficientNet", "EfficientNet", 32,
        image_size=32, width_coefficient=0.25, depth_coefficient=0.1, hidden_dim=320,  # hidden_dim: the head conv's width
    ),
    _vision("hf:mobilenet_v2", "MobileNetV2", "MobileNetV2", 32, image_size=32, depth_multiplier=0.25),
    _vision(
        "hf:mobilevit", "MobileViT", "MobileViT", 32, image_size=32, hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48], num_attention_heads=2,
    ),
    _vision(
        "hf:levit", "LeViT", "Levit", 32, image_size=32, hidden_sizes=[16, 24, 32],
        num_attention_heads=[1, 2, 2], depths=[1, 1, 1], key_dim=[8, 8, 8],
    ),
    _vision("hf:dinov2", "DINOv2", "Dinov2", 16, **VIT),
    # text
    _text("hf:bert", "BERT", "Bert", token_types=True),
    _text("hf:roberta", "RoBERTa", "Roberta", pad_id=1, max_position_embeddings=26),
    _text("hf:distilbert", "DistilBERT", "DistilBert", dim=32, n_layers=2, n_heads=4, hidden_dim=37),
    _text("hf:albert", "ALBERT", "Albert", token_types=True, embedding_size=16),
    _text("hf:electra", "ELECTRA", "Electra", token_types=True, embedding_size=16),
    _text(
        "hf:deberta_v2", "DeBERTa-v2", "DebertaV2", token_types=True, relative_attention=True,
        pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=24, share_att_key=True,
        position_biased_input=False, norm_rel_ebd="layer_norm",
    ),
    _text("hf:modernbert", "ModernBERT", "ModernBert", bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3),
    _text(
        "hf:gpt2", "GPT-2", "GPT2", n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=24,
        bos_token_id=1, eos_token_id=1,
    ),
    _text("hf:llama", "Llama", "Llama", num_key_value_heads=2),
    _text("hf:mistral", "Mistral", "Mistral", num_key_value_heads=2),
    _text("hf:qwen2", "Qwen2", "Qwen2", num_key_value_heads=2),
    _text("hf:qwen3", "Qwen3", "Qwen3", num_key_value_heads=2, head_dim=8),
    _text("hf:phi3", "Phi-3", "Phi3", num_key_value_heads=2, bos_token_id=1, eos_token_id=1),
    _text("hf:gemma", "Gemma", "Gemma", num_key_value_heads=2, head_dim=8, bos_token_id=1, eos_token_id=1),
]  # fmt: skip
