"""Tiny Hugging Face directories and data sets, built offline, for the CLI and text-data tests.

A BERT classifier with a WordLevel tokenizer (built with ``tokenizers``, wrapped in
transformers' ``PreTrainedTokenizerFast``), a ViT classifier with an image processor, and a
text ``DatasetDict`` written with ``save_to_disk``. Sizes avoid coincidences between a channel
count and another axis (intermediate 37, 24 positions), as in tests/models/test_hf_models.py.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "movie", "film", "plot", "very", "not", "the", "a", "is"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
LABEL_WORDS = {0: ["bad", "awful", "poor"], 1: ["good", "great", "fine"], 2: ["movie", "film", "plot"]}


def save_tokenizer(directory: Path) -> None:
    """A whitespace WordLevel tokenizer with BERT's special tokens and [CLS] ... [SEP] framing."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip
    wrapped.save_pretrained(directory)


def save_bert(directory: Path, num_labels: int = 3, hidden: int = 32, tokenizer: bool = True) -> Path:
    """A tiny random BertForSequenceClassification (and its tokenizer) saved with save_pretrained."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=24, type_vocab_size=2, num_labels=num_labels, pad_token_id=0,
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    if tokenizer:
        save_tokenizer(directory)
    return directory


def save_vit(directory: Path, num_labels: int = 10, channels: int = 1, size: int = 16) -> Path:
    """A tiny random ViTForImageClassification with a ViTImageProcessor of ``size`` pixels."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=size, patch_size=4, num_channels=channels, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, num_labels=num_labels,
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(directory)
    processor = transformers.ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * channels, image_std=[0.25] * channels
    )
    processor.save_pretrained(directory)
    return directory


def text_rows(count: int, seed: int, pairs: bool = False) -> dict[str, list]:
    """Short sentences whose label is told by their words (3 classes)."""
    import random

    rng = random.Random(seed)
    rows: dict[str, list] = {"text": [], "label": []}
    if pairs:
        rows["second"] = []
    for i in range(count):
        label = i % 3
        words = [rng.choice(LABEL_WORDS[label]) for _ in range(rng.randint(1, 4))]
        filler = [rng.choice(["the", "a", "is", "very", "not"]) for _ in range(rng.randint(0, 3))]
        rows["text"].append(" ".join(filler + words))
        rows["label"].append(label)
        if pairs:
            rows["second"].append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))))
    return rows


def save_text_dataset(directory: Path, train: int = 36, test: int = 12, pairs: bool = False) -> Path:
    """A DatasetDict (train/test; a ClassLabel of 3 names) written with save_to_disk."""
    import datasets

    features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos", "topic"])}
    if pairs:
        features["second"] = datasets.Value("string")
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(text_rows(train, 0, pairs), features=datasets.Features(features)),
            "test": datasets.Dataset.from_dict(text_rows(test, 1, pairs), features=datasets.Features(features)),
        }
    )
    data.save_to_disk(str(directory))
    return directory
