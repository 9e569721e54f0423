"""train_acc: the student's accuracy on the training batches, counted on the device from the
logits the distiller returns with its losses (no second forward pass)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training_engine import SMALL, TINY_VIT

from gpd.config import load_config
from gpd.training.run_dir import prepare_run_dir
from gpd.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("memory_mode", ["joint", "sequential"])
def test_train_acc_is_the_students_accuracy_on_the_batches_it_trained_on(memory_mode: str, tmp_path: Path) -> None:
    # lr 1e-30 keeps the float32 weights, and the ViT has neither BatchNorm nor dropout: the student is the
    # same function at every step, so the epoch's count must equal one pass over the training set
    cfg = load_config(
        None,
        [*SMALL, *TINY_VIT, "train.lr=1e-30", "train.epochs=1", f"train.memory_mode={memory_mode}",
         "train.grad_probe_every=3", f"output_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    trainer = Trainer(cfg, prepare_run_dir(cfg))
    trainer.distiller.train()
    with torch.no_grad():
        images, labels = zip(*(trainer.data.train[i] for i in range(len(trainer.data.train))))  # type: ignore[arg-type]
        x, y = torch.stack(images), torch.as_tensor(labels)
        expected = 100.0 * (trainer.distiller.student_logits(x).argmax(-1) == y).float().mean().item()
    assert len(trainer.loop.loaders.train) * cfg.train.batch_size == len(y)  # no batch dropped
    row = trainer.fit()
    assert row["train_acc"] == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected < 100.0  # a count that can be wrong either way
