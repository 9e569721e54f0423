"""Text classification from a Hugging Face data set saved to disk (``data.name=hf_disk``, a text column).

``data.text_key`` (default ``text``) names the column, ``data.text_pair_key`` a second one for
sentence pairs, ``data.label_key`` the labels. The text is tokenized once by the tokenizer of
the student's ``hf:`` directory, or of ``data.tokenizer=PATH``, truncated to ``data.max_length``
tokens (default: the model's position count, else the tokenizer's limit, at most 512), with
``datasets.Dataset.map``: the tokenized set is cached by datasets' own cache, as ``cache-*.arrow``
files beside the saved set's arrow files (keyed by a fingerprint of the tokenizer and the
settings), so a second run reads it back. Padding is dynamic: each batch is padded to its
longest text by :class:`PadBatch`, which gives the mapping ``input_ids`` / ``attention_mask``
(/ ``token_type_ids``) that the tokenizer gives and the model takes as keyword arguments.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from gpd.data.bundle import DataBundle
from gpd.errors import DataError, first_line

DEFAULT_MAX_LENGTH = 512
EXAMPLE_ROWS = 8  # the expansion's example batch: several distinct texts


@dataclass(frozen=True)
class TextOptions:
    """How the text of an ``hf_disk`` set is read: its columns, the tokenizer and the length."""

    text_key: str = "text"
    text_pair_key: str | None = None
    tokenizer: str | None = None  # a directory holding a tokenizer (the student's, or data.tokenizer)
    max_length: int | None = None
    required: bool = False  # the student reads text: the text column must be there
    model_positions: int | None = None  # the student's position count: the default max_length


class TokenizedText(Dataset):
    """One tokenized split: ``({input_ids, attention_mask, ...} as lists, label)`` per sample.

    ``split`` and ``label_key`` let :func:`gpd.data.labels.dataset_targets` read the labels as a column."""

    def __init__(self, split: Any, label_key: str, input_names: tuple[str, ...]) -> None:
        self.split, self.label_key, self.input_names = split, label_key, input_names

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[dict[str, list[int]], int]:
        row = self.split[int(index)]
        return {name: row[name] for name in self.input_names}, int(row[self.label_key])


class PadBatch:
    """The collate_fn of text batches: pads each batch to its longest text with the tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[tuple[dict[str, list[int]], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        padded = self.tokenizer.pad([features for features, _ in samples], return_tensors="pt")
        return dict(padded), torch.tensor([label for _, label in samples], dtype=torch.long)


@contextlib.contextmanager
def _no_progress_bars(datasets: Any) -> Iterator[None]:
    enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def load_tokenizer(path: str | None) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` with one-line DataErrors (none given, none there)."""
    if path is None:
        raise DataError(
            "hf_disk: the data set holds text and needs a tokenizer: use an hf:DIR student whose directory "
            "has one, or set data.tokenizer=PATH"
        )
    try:
        import transformers
    except ImportError:
        raise DataError("hf_disk text needs Hugging Face transformers: pip install 'gpd[hf]'") from None
    from gpd.models.transformers_hub import TEXT_FILES, quiet

    folder = Path(path).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in TEXT_FILES):
        raise DataError(f"hf_disk: no tokenizer in {folder} (no tokenizer.json); set data.tokenizer=PATH")
    try:
        with quiet(transformers):
            return transformers.AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise DataError(f"hf_disk: cannot load a tokenizer from {path}: {first_line(err)}") from None


def default_max_length(tokenizer: Any, model_positions: int | None) -> int:
    """The model's position count if known, else the tokenizer's limit, at most DEFAULT_MAX_LENGTH."""
    if model_positions:
        return int(model_positions)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= DEFAULT_MAX_LENGTH else DEFAULT_MAX_LENGTH


def check_columns(split: Any, options: TextOptions, label_key: str) -> None:
    """A one-line DataError for a text, pair or label column the split lacks."""
    keys = [(options.text_key, "data.text_key"), (label_key, "data.label_key")]
    if options.text_pair_key is not None:
        keys.insert(1, (options.text_pair_key, "data.text_pair_key"))
    for key, what in keys:
        if key not in split.column_names:
            raise DataError(f"hf_disk: no text column {key!r} ({what}); the columns are {split.column_names}")


def _tokenize(split: Any, tokenizer: Any, options: TextOptions, max_length: int, label_key: str) -> Any:
    """The split with its text replaced by token ids (datasets' map, cached by its fingerprint)."""
    import datasets

    text, pair = options.text_key, options.text_pair_key

    def encode(rows: dict[str, list[Any]]) -> Any:
        second = rows[pair] if pair is not None else None
        return tokenizer(rows[text], second, truncation=True, max_length=max_length)

    drop = [c for c in split.column_names if c != label_key]
    with _no_progress_bars(datasets):
        return split.map(encode, batched=True, remove_columns=drop)


def build_text_bundle(
    train_split: Any, test_split: Any, label_key: str, classes: tuple[str, ...], options: TextOptions
) -> DataBundle:
    """The bundle of a text set: tokenized splits, the padding collate_fn and an example batch."""
    for split in (train_split, test_split):
        check_columns(split, options, label_key)
    tokenizer = load_tokenizer(options.tokenizer)
    max_length = options.max_length or default_max_length(tokenizer, options.model_positions)
    train_tok = _tokenize(train_split, tokenizer, options, max_length, label_key)
    test_tok = _tokenize(test_split, tokenizer, options, max_length, label_key)
    names = tuple(n for n in tokenizer.model_input_names if n in train_tok.column_names)
    train, test = TokenizedText(train_tok, label_key, names), TokenizedText(test_tok, label_key, names)
    collate = PadBatch(tokenizer)
    example, _ = collate([train[i] for i in range(min(EXAMPLE_ROWS, len(train)))])
    return DataBundle(
        train, test, len(classes), 1, (max_length,), (), (), "hf_disk", False, classes,
        task="text", collate=collate, example=example, preprocessor=options.tokenizer,
    )  # fmt: skip
