"""The training loop and evaluation take batches whose input is a mapping of keyword arguments
(a tokenized text data set collated into ``{"input_ids", "attention_mask"}``), as they take
image tensors; Mixup/CutMix, which mix images, refuse them."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from gpd.data.mixing import build_mixup
from gpd.distill import Distiller
from gpd.errors import ConfigError
from gpd.inputs import batch_to_device
from gpd.training.builders import Loaders
from gpd.training.distributed import DistContext
from gpd.training.grad_stats import GradStats
from gpd.training.loop import LoopSettings, TrainLoop
from gpd.training.nonfinite import NonFiniteGuard
from gpd.training.precision import Precision
from gpd.training.selection import WeightSelection
from gpd.training.state import TrainState

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CPU = torch.device("cpu")
VOCAB, SEQ, LABELS, SAMPLES = 50, 8, 3, 24


class BagOfWords(nn.Module):
    """A text classifier without transformers: it takes ``input_ids`` and ``attention_mask`` as
    keyword arguments, averages the embeddings of the unmasked tokens, and returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.hidden = nn.Linear(16, 24)
        self.head = nn.Linear(24, LABELS)

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return {"logits": self.head(torch.relu(self.hidden(pooled)))}


def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=24, num_labels=LABELS,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _text_samples() -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Tokenized samples padded to one length, as a data set yields them (the default collate stacks them)."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    for i in range(SAMPLES):
        length = 3 + i % (SEQ - 2)
        ids = torch.zeros(SEQ, dtype=torch.long)
        ids[:length] = torch.randint(1, VOCAB, (length,), generator=generator)
        mask = (ids != 0).long()
        samples.append(({"input_ids": ids, "attention_mask": mask}, torch.tensor(i % LABELS)))
    return samples


def _loop(model: nn.Module, mixup: Any = None) -> TrainLoop:
    """A TrainLoop built from its parts (no Config), over mapping batches of 8 samples."""
    torch.manual_seed(0)
    data = _text_samples()
    example = {k: torch.stack([data[i][0][k] for i in range(4)]) for k in data[0][0]}
    distiller = Distiller(model, ratio=2.0, example_input=example)
    sampler: DistributedSampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)  # type: ignore[arg-type]
    loaders = Loaders(DataLoader(data, batch_size=8, sampler=sampler, drop_last=True), sampler,  # type: ignore[arg-type]
                      DataLoader(data, batch_size=12), None)  # type: ignore[arg-type]  # fmt: skip
    optimizer = torch.optim.SGD(distiller.param_groups(0.0), lr=0.05, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=1, updates_per_epoch=3)
    settings = LoopSettings(epochs=1, batch_size=8, memory_mode="joint", grad_clip=2.0, channels_last=True)
    return TrainLoop(
        settings, TrainState(), distiller=distiller, train_module=distiller, network=distiller.network,
        loaders=loaders, optimizer=optimizer, scheduler=scheduler, precision=Precision("fp32", CPU),
        selection=WeightSelection(has_val=False, has_ema=False), mixup=mixup,
        guard=NonFiniteGuard("stop", 4, DistContext(), CPU), grad_stats=GradStats(CPU, clipping=True),
    )  # fmt: skip


@pytest.mark.parametrize("make", [BagOfWords, _bert], ids=["keyword_model", "bert"])
def test_an_epoch_trains_and_evaluates_on_mapping_batches(make) -> None:
    loop = _loop(make())
    row = loop.run_epochs(1)
    assert loop.state.num_updates == SAMPLES // 8
    losses = {k: v for k, v in row.items() if k == "train_loss" or k.startswith("loss_")}
    assert len(losses) > 1 and all(math.isfinite(v) for v in losses.values()), losses
    for key in ("train_acc", "student_acc", "dynamic_acc"):
        assert 0.0 <= row[key] <= 100.0, key


def test_channels_last_applies_to_images_only() -> None:
    ids = torch.ones(2, 8, dtype=torch.long)
    moved = batch_to_device({"input_ids": ids, "pixel_values": torch.randn(2, 3, 4, 4)}, CPU, torch.channels_last)
    assert moved["input_ids"].is_contiguous()
    assert moved["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 4, 4)
    assert batch_to_device(images, CPU, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    assert batch_to_device(ids.view(2, 2, 2, 2), CPU, torch.channels_last).is_contiguous()  # 4-D ids stay as they are


def test_mixup_refuses_a_mapping_batch_and_names_its_keys() -> None:
    data = SimpleNamespace(mixup=0.8, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5)
    loop = _loop(BagOfWords(), mixup=build_mixup(data, LABELS, batch_size=8))
    with pytest.raises(ConfigError, match=r"mapping of input_ids, attention_mask; set data.mixup=0") as info:
        loop.train_one_epoch(1)
    assert "\n" not in str(info.value)
