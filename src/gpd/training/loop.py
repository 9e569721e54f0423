"""The training loop: epochs, steps, evaluation, and the hooks that write (no file IO here).

The loop knows nothing about GPD: the :class:`~gpd.distill.Distiller` returns a dict of
loss terms and the loop sums them, as in torchvision's reference scripts with
mdistiller's distiller contract. Nothing is read back from the device per step: the loss
sums, gradient statistics and the non-finite flag stay there until the flag's periodic
read (``train.nonfinite_check_every``) and the epoch's end. What a run writes (metrics,
TensorBoard, checkpoints, student.pt) is done by its callbacks (:mod:`gpd.training.callbacks`).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import AbstractContextManager
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from gpd.data.mixing import mix_batch
from gpd.distill import DistillerOutput, total_loss
from gpd.sharing.steps import clip_grad_norm_, grad_norm
from gpd.training.backward import joint_backward, probed_backward, sequential_backward
from gpd.training.distributed import all_reduce_sum
from gpd.training.evaluate import models_of_run, split_accuracy
from gpd.training.rows import epoch_row, summary_line

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler

    from gpd.config import Config
    from gpd.data import DataBundle
    from gpd.distill import Distiller
    from gpd.training.callbacks import Callback
    from gpd.training.distributed import DistContext
    from gpd.training.grad_stats import GradStats
    from gpd.training.nonfinite import NonFiniteGuard
    from gpd.training.policy import RunPolicy
    from gpd.training.precision import Precision
    from gpd.training.selection import WeightSelection


class TrainLoop:
    """The loop's methods; :class:`~gpd.training.trainer.Trainer` builds the objects they use.

    The annotations below are the run's state that the loop and the callbacks read."""

    cfg: Config
    ctx: DistContext
    device: torch.device
    policy: RunPolicy
    data: DataBundle
    distiller: Distiller
    core: nn.Module  # D with its student view, or the plain student: what EMA and export follow
    train_module: Any  # the distiller, or its DDP / compiled wrapper
    train_loader: DataLoader
    sampler: DistributedSampler
    test_loader: DataLoader
    val_loader: DataLoader | None
    mixup: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    ema: ModelEmaV3 | None
    trainable: list[torch.Tensor]
    grad_scales: dict[torch.Tensor, float]
    grad_stats: GradStats
    guard: NonFiniteGuard
    selection: WeightSelection
    memory_format: torch.memory_format
    num_updates: int
    start_epoch: int
    static_teacher_acc: float | None
    static_teacher_fingerprint: str | None
    rows: list[dict[str, Any]]
    callbacks: list[Callback]

    def _no_sync(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _student_of(self, weights: str) -> nn.Module:
        raise NotImplementedError

    def selected_student(self) -> nn.Module:
        raise NotImplementedError

    def run_epochs(self, last_epoch: int) -> dict[str, Any]:
        """Train epochs ``start_epoch..last_epoch`` with the callbacks' hooks; the last row."""
        for callback in self.callbacks:
            callback.on_fit_start(self)
        row: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, last_epoch + 1):
                row = self.run_epoch(epoch)
        finally:
            for callback in self.callbacks:
                callback.close(self)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return row

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        epoch_started = time.perf_counter()
        train = self.train_one_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]  # as of the epoch's last step
        acc = self.evaluate()
        row = epoch_row(
            epoch, lr, train, acc, static_teacher_acc=self.static_teacher_acc, has_ema=self.ema is not None,
            has_val=self.val_loader is not None, counts_skipped=self.cfg.train.on_nonfinite == "skip",
        )  # fmt: skip
        self.selection.update(epoch, acc, self._student_of)
        row["seconds"] = time.perf_counter() - epoch_started
        self.rows.append(row)
        for callback in self.callbacks:  # the metrics row first, then the checkpoint, which also holds it
            callback.on_epoch_end(self, epoch, row)
        self.log(summary_line(epoch, self.cfg.train.epochs, row, acc, self.static_teacher_acc, self.ema is not None))
        return row

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data (within the policy's step cap)."""
        self.distiller.train()
        self.sampler.set_epoch(epoch)
        device = self.device
        sums: defaultdict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        seen = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)  # the student's, on the training batches as trained
        skipped = 0
        self.grad_stats.reset()
        self.guard.reset()
        started = time.perf_counter()
        steps = len(self.train_loader)
        bar = tqdm(
            total=steps * self.cfg.train.batch_size, desc=f"epoch {epoch}/{self.cfg.train.epochs}", unit="img",
            unit_scale=True, leave=False, dynamic_ncols=True, disable=None if self.ctx.is_main else True,
        )  # fmt: skip
        for step, (x, y) in enumerate(self.train_loader):
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            x, targets = mix_batch(self.mixup, x, y)  # Mixup/CutMix: soft targets; y stays the labels
            where = f"epoch {epoch}, step {step}"
            out = self.train_step(x, targets, epoch - 1 + step / steps, where, probe=self._probe_due(step))
            if out is None:
                skipped += 1
            else:
                losses = out.losses
                correct += (out.student_logits.argmax(-1) == y).sum()
                step_loss = total_loss(losses)
                for name, value in losses.items():
                    sums[name] += value * y.numel()
                sums["loss"] += step_loss * y.numel()
                seen += y.numel()
            if self.guard.due():
                self.guard.raise_if_flagged()  # the periodic read; the loss shown is the epoch's running mean
                bar.set_postfix(loss=f"{float(sums['loss'] / seen.clamp(min=1)):.3f}")
            bar.update(y.numel() * self.ctx.world_size)
            if self.policy.last_step(step):
                break
        bar.close()
        self.guard.raise_if_flagged()  # before anything of this epoch is evaluated or written
        seconds = time.perf_counter() - started
        names = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[n] for n in names] + [correct, seen]), self.ctx).tolist()
        total_seen = max(totals[-1], 1.0)
        result = {name: value / total_seen for name, value in zip(names, totals)}
        result["train_acc"] = 100.0 * totals[-2] / total_seen
        result.update(train_seconds=seconds, img_per_s=totals[-1] / seconds, skipped_steps=skipped)
        result.update(self.grad_stats.epoch_means())
        return result

    def _probe_due(self, step: int) -> bool:
        """Whether this step measures the student's and D's loss gradients separately
        (train.grad_probe_every; not under DDP, whose hooks follow the wrapper's backward passes)."""
        every = self.cfg.train.grad_probe_every
        if not every or step % every or not self.distiller.has_dynamic_teacher:
            return False
        return not self.ctx.enabled

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, epoch_progress: float, where: str, probe: bool = False
    ) -> DistillerOutput | None:
        """One optimisation step; returns the detached loss terms and student logits, or None if
        the step was skipped.

        ``probe``: run the sequential mode (the same gradients) and measure the gradient
        norm of D's loss terms and of the student's separately."""
        self.optimizer.zero_grad(set_to_none=True)
        p = self.precision
        if probe:
            out, role_norms = probed_backward(
                self.distiller, x, y, epoch_progress, p.autocast, p.backward, self.trainable, self.grad_scales
            )
            self.grad_stats.add_probe(*role_norms, p.scaler.get_scale() if p.scaler is not None else 1.0)
        elif self.cfg.train.memory_mode == "joint":
            out = joint_backward(self.train_module, x, y, epoch_progress, p.autocast, p.backward)
        else:
            out = sequential_backward(
                self.train_module, x, y, epoch_progress, p.autocast, p.backward, first_half=self._no_sync
            )
        losses = {name: value.detach().float() for name, value in out.losses.items()}
        bad = self.guard.check_step(losses, where)
        if bad is not None:
            self.log(f"warning: non-finite loss at {bad}; step skipped (train.on_nonfinite=skip)")
            self.optimizer.zero_grad(set_to_none=True)
            return None
        p.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip
        if clip:  # the global norm as the paper's optimizer sees it (gpd.sharing.steps)
            norm = clip_grad_norm_(self.trainable, clip, self.grad_scales)
        else:
            norm = grad_norm(self.trainable, self.grad_scales)
        self.grad_stats.add_step(norm, clip)
        p.step(self.optimizer)
        self.num_updates += 1
        self.scheduler.step_update(num_updates=self.num_updates)
        if self.ema is not None:
            self.ema.update(self.core, step=self.num_updates)
        return DistillerOutput(losses, out.student_logits.detach())

    def evaluate(self) -> dict[str, float]:
        """Test accuracy of the student, D, their EMA and the static teacher (once: it is frozen),
        and with a validation split the same models' validation accuracy (keys ``val_*``)."""
        models = models_of_run(self.distiller, self.ema, self.ctx)
        result: dict[str, float] = {}
        if self.val_loader is not None:
            result.update({f"val_{k}": v for k, v in self._accuracy(models, self.val_loader).items()})
        if self.distiller.static_teacher is not None and self.static_teacher_acc is None:
            models["static_teacher"] = self.distiller.static_teacher
        result.update(self._accuracy(models, self.test_loader))
        self.static_teacher_acc = result.pop("static_teacher", self.static_teacher_acc)
        return result

    def _accuracy(self, models: dict[str, Any], loader: Any) -> dict[str, float]:
        n = self.policy.max_eval_batches
        batches = loader if n is None else islice(loader, n)
        return split_accuracy(
            models, batches, self.ctx, self.device, self.cfg.train.channels_last, self.precision.autocast
        )

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message, file=sys.stdout)
