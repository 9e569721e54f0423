"""The training loop: epochs, steps, evaluation, and the hooks that write (no file IO here).

The loop knows nothing about GPD nor the config: it gets its settings
(:class:`LoopSettings`), the run's progress (:class:`~gpd.training.state.TrainState`) and
the objects it trains with, built by :class:`~gpd.training.trainer.Trainer`. The
:class:`~gpd.distill.Distiller` returns a dict of loss terms and the loop sums them, as in
torchvision's reference scripts with mdistiller's distiller contract. Nothing is read back
from the device per step: the loss sums, gradient statistics and the non-finite flag stay
there until the flag's periodic read (``train.nonfinite_check_every``) and the epoch's end.
What a run writes (metrics, TensorBoard, checkpoints, student.pt) is done by its callbacks
(:mod:`gpd.training.callbacks`). Progress within an epoch: tqdm's bar on a terminal, and
where the log is not one, a line every ``train.log_interval_s`` seconds
(:mod:`gpd.training.progress`).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gpd.choices import MemoryMode, NonfinitePolicy
from gpd.data.mixing import mix_batch
from gpd.distill import DistillerOutput, total_loss
from gpd.distill.tasks import ClassificationTask, SegmentationTask
from gpd.inputs import Inputs, batch_to_device
from gpd.sharing.steps import clip_grad_norm_, grad_norm
from gpd.training.backward import joint_backward, probed_backward, sequential_backward
from gpd.training.distributed import DistContext, all_reduce_sum
from gpd.training.evaluate import models_of_run, split_accuracy, split_metrics
from gpd.training.policy import FULL_RUN, RunPolicy
from gpd.training.progress import ProgressLines, wants_progress_lines
from gpd.training.rng import restore_rng
from gpd.training.rows import epoch_row, summary_line
from gpd.training.selection import standalone_student

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3
    from torch import nn

    from gpd.distill import Distiller
    from gpd.training.builders import Loaders
    from gpd.training.callbacks import Callbacks
    from gpd.training.grad_stats import GradStats
    from gpd.training.nonfinite import NonFiniteGuard
    from gpd.training.precision import Precision
    from gpd.training.selection import WeightSelection
    from gpd.training.state import TrainState


@dataclass(frozen=True)
class LoopSettings:
    """What the loop is told of a run's config (``train.*`` and the run policy's caps).

    ``epochs`` and ``batch_size``: as configured, for the progress shown; ``policy``: the
    run's caps (a dry run's steps per epoch and batches per evaluated split);
    ``log_interval_s``: the seconds between progress lines in a log (0: none)."""

    epochs: int
    batch_size: int
    memory_mode: MemoryMode = "joint"
    grad_clip: float | None = None
    grad_probe_every: int = 0
    on_nonfinite: NonfinitePolicy = "stop"
    channels_last: bool = False
    policy: RunPolicy = FULL_RUN
    log_interval_s: float = 30.0


class TrainLoop:
    """Trains ``distiller`` through ``train_module`` (itself, or its DDP / compiled wrapper),
    advancing ``state``; ``network`` is the trained network the EMA follows.

    ``progress_lines``: whether the log gets progress lines during an epoch (None: where
    stdout or stderr is not a terminal, :func:`~gpd.training.progress.wants_progress_lines`)."""

    def __init__(
        self,
        settings: LoopSettings,
        state: TrainState,
        *,
        distiller: Distiller,
        train_module: Callable[..., Any],
        network: nn.Module,
        loaders: Loaders,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        precision: Precision,
        guard: NonFiniteGuard,
        grad_stats: GradStats,
        selection: WeightSelection,
        ema: ModelEmaV3 | None = None,
        mixup: Any = None,
        callbacks: Callbacks | None = None,
        ctx: DistContext | None = None,
        device: torch.device | None = None,
        progress_lines: bool | None = None,
    ) -> None:
        self.settings, self.state = settings, state
        self.distiller, self.train_module, self.network = distiller, train_module, network
        self.loaders, self.mixup = loaders, mixup
        self.optimizer, self.scheduler, self.precision, self.ema = optimizer, scheduler, precision, ema
        self.guard, self.grad_stats, self.selection = guard, grad_stats, selection
        self.callbacks = callbacks
        self.ctx = ctx or DistContext()
        self.device = device or torch.device("cpu")
        self.progress_lines = wants_progress_lines(sys.stdout, sys.stderr) if progress_lines is None else progress_lines
        self.counts_top1 = isinstance(distiller.task, ClassificationTask)  # else: the task's metrics (split_metrics)
        self.headline = "accuracy" if self.counts_top1 else "metric (the task's first)"  # segmentation: mIoU
        if isinstance(distiller.task, SegmentationTask):
            self.headline = "mIoU"
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.trainable = [p for p in distiller.parameters() if p.requires_grad]
        # D's tensors that the paper's parameterisation stores differently: their gradient counts
        # as the paper's in the clipped norm (gpd.sharing.steps); empty for plain steps
        self.grad_scales = distiller.grad_scales()

    def run_epochs(self, last_epoch: int) -> dict[str, Any]:
        """Train epochs ``state.next_epoch..last_epoch`` with the callbacks' hooks; the last row."""
        if self.state.rng is not None:  # a resumed process continues its random streams
            restore_rng(self.state.rng)
            self.state.rng = None
        if self.callbacks is not None:
            self.callbacks.on_fit_start(self.state)
        row: dict[str, Any] = {}
        try:
            for epoch in range(self.state.next_epoch, last_epoch + 1):
                row = self.run_epoch(epoch)
        finally:
            if self.callbacks is not None:
                self.callbacks.close(self.state)
        if self.callbacks is not None:
            self.callbacks.on_fit_end(self.state)
        return row

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        epoch_started = time.perf_counter()
        train = self.train_one_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]  # as of the epoch's last step
        acc = self.evaluate()
        state, s = self.state, self.settings
        row = epoch_row(
            epoch, lr, train, acc, static_teacher_acc=state.static_teacher_acc, has_ema=self.ema is not None,
            has_val=self.loaders.val is not None, counts_skipped=s.on_nonfinite == "skip",
        )  # fmt: skip
        self.selection.update(epoch, acc, self.student_of)
        row["seconds"] = time.perf_counter() - epoch_started
        state.rows.append(row)
        state.epoch = epoch
        if self.callbacks is not None:  # in their declared order (gpd.training.callbacks)
            self.callbacks.on_epoch_end(state, row)
        self.log(summary_line(epoch, s.epochs, row, acc, state.static_teacher_acc, self.ema is not None))
        return row

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data (within the step cap)."""
        self.distiller.train()
        self.loaders.sampler.set_epoch(epoch)
        device = self.device
        sums: defaultdict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        seen = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)  # the student's, on the training batches as trained
        skipped = 0
        self.grad_stats.reset()
        self.guard.reset()
        started = time.perf_counter()
        loader, s = self.loaders.train, self.settings
        steps = len(loader)
        bar = tqdm(
            total=steps * s.batch_size, desc=f"epoch {epoch}/{s.epochs}", unit="img",
            unit_scale=True, leave=False, dynamic_ncols=True, disable=None if self.ctx.is_main else True,
        )  # fmt: skip
        lines = self._progress_lines(epoch, steps)
        for step, (x, y) in enumerate(loader):
            x = batch_to_device(x, self.device, self.memory_format)  # a tensor, or a mapping of keyword arguments
            y = y.to(self.device, non_blocking=True)
            x, targets = mix_batch(self.mixup, x, y)  # Mixup/CutMix: soft targets; y stays the labels
            where = f"epoch {epoch}, step {step}"
            out = self.train_step(x, targets, epoch - 1 + step / steps, where, probe=self._probe_due(step))
            if out is None:
                skipped += 1
            else:
                losses = out.losses
                if self.counts_top1:  # top-1 of a classifier; other tasks' metrics are evaluated, not trained
                    correct += (out.student_logits.argmax(-1) == y).sum()
                step_loss = total_loss(losses)
                for name, value in losses.items():
                    sums[name] += value * len(y)
                sums["loss"] += step_loss * len(y)
                seen += len(y)
            if self.guard.due():
                self.guard.raise_if_flagged()  # the periodic read; the loss shown is the epoch's running mean
                bar.set_postfix(loss=f"{float(sums['loss'] / seen.clamp(min=1)):.3f}")
            bar.update(len(y) * self.ctx.world_size)
            if lines is not None:  # the loss shown: this process's running mean, read when a line is due
                lines.step(len(y) * self.ctx.world_size, partial(running_loss, sums, seen))
            if s.policy.last_step(step):
                break
        bar.close()
        self.guard.raise_if_flagged()  # before anything of this epoch is evaluated or written
        seconds = time.perf_counter() - started
        names = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[n] for n in names] + [correct, seen]), self.ctx).tolist()
        total_seen = max(totals[-1], 1.0)
        result = {name: value / total_seen for name, value in zip(names, totals)}
        if self.counts_top1:
            result["train_acc"] = 100.0 * totals[-2] / total_seen
        result.update(train_seconds=seconds, img_per_s=totals[-1] / seconds, skipped_steps=skipped)
        result.update(self.grad_stats.epoch_means())
        return result

    def _progress_lines(self, epoch: int, steps: int) -> ProgressLines | None:
        """The epoch's progress lines (rank 0, where wanted and ``log_interval_s`` > 0), else None."""
        s = self.settings
        if not (self.progress_lines and s.log_interval_s > 0 and self.ctx.is_main):
            return None
        total = steps if s.policy.max_steps is None else min(steps, s.policy.max_steps)
        return ProgressLines(epoch, s.epochs, total, s.log_interval_s, self.log)

    def _probe_due(self, step: int) -> bool:
        """Whether this step measures the student's and D's loss gradients separately
        (``grad_probe_every``; not under DDP, whose hooks follow the wrapper's backward passes)."""
        every = self.settings.grad_probe_every
        if not every or step % every or not self.distiller.has_dynamic_teacher:
            return False
        return not self.ctx.enabled

    def no_sync(self) -> AbstractContextManager[Any]:
        """DDP's no_sync for D's half of a sequential step (nothing outside torchrun)."""
        ddp = getattr(self.train_module, "_orig_mod", self.train_module)  # under torch.compile
        return ddp.no_sync() if isinstance(ddp, DistributedDataParallel) else nullcontext()

    def train_step(
        self, x: Inputs, y: torch.Tensor, epoch_progress: float, where: str, probe: bool = False
    ) -> DistillerOutput | None:
        """One optimisation step; returns the detached loss terms and student logits, or None if
        the step was skipped.

        ``probe``: run the sequential mode (the same gradients) and measure the gradient
        norm of D's loss terms and of the student's separately."""
        self.optimizer.zero_grad(set_to_none=True)
        p, s = self.precision, self.settings
        if probe:
            out, role_norms = probed_backward(
                self.distiller, x, y, epoch_progress, p.autocast, p.backward, self.trainable, self.grad_scales
            )
            self.grad_stats.add_probe(*role_norms, p.scaler.get_scale() if p.scaler is not None else 1.0)
        elif s.memory_mode == "joint":
            out = joint_backward(self.train_module, x, y, epoch_progress, p.autocast, p.backward)
        else:
            out = sequential_backward(
                self.train_module, x, y, epoch_progress, p.autocast, p.backward, first_half=self.no_sync
            )
        losses = {name: value.detach().float() for name, value in out.losses.items()}
        bad = self.guard.check_step(losses, where)
        if bad is not None:
            self.log(f"warning: non-finite loss at {bad}; step skipped (train.on_nonfinite=skip)")
            self.optimizer.zero_grad(set_to_none=True)
            return None
        p.unscale_(self.optimizer)
        if s.grad_clip:  # the global norm as the paper's optimizer sees it (gpd.sharing.steps)
            norm = clip_grad_norm_(self.trainable, s.grad_clip, self.grad_scales)
        else:
            norm = grad_norm(self.trainable, self.grad_scales)
        self.grad_stats.add_step(norm, s.grad_clip)
        p.step(self.optimizer)
        self.state.num_updates += 1
        self.scheduler.step_update(num_updates=self.state.num_updates)
        if self.ema is not None:
            self.ema.update(self.network, step=self.state.num_updates)
        return DistillerOutput(losses, out.student_logits.detach())

    def evaluate(self) -> dict[str, float]:
        """Test accuracy of the student, D, their EMA and the static teacher (once: it is frozen),
        and with a validation split the same models' validation accuracy (keys ``val_*``)."""
        models = models_of_run(self.distiller, self.ema, self.ctx)
        result: dict[str, float] = {}
        if self.loaders.val is not None:
            result.update({f"val_{k}": v for k, v in self._accuracy(models, self.loaders.val).items()})
        state = self.state
        if self.distiller.static_teacher is not None and self._static_teacher_due():
            models["static_teacher"] = self.distiller.static_teacher
        result.update(self._accuracy(models, self.loaders.test))
        if "static_teacher" in result:  # measured once, kept in the state (and the checkpoint)
            state.static_teacher_acc = result.pop("static_teacher")
            if not self.counts_top1:
                found = {k: v for k, v in result.items() if k.startswith("static_teacher:")}
                state.static_teacher_metrics = found
        result.update(state.static_teacher_metrics or {})
        return result

    def _static_teacher_due(self) -> bool:
        """Whether this evaluation measures the static teacher: once, or again for a task's metrics
        that a checkpoint of an older gpd did not keep."""
        state = self.state
        return state.static_teacher_acc is None or (not self.counts_top1 and state.static_teacher_metrics is None)

    def _accuracy(self, models: dict[str, Any], loader: Any) -> dict[str, float]:
        n = self.settings.policy.max_eval_batches
        batches = loader if n is None else islice(loader, n)
        if not self.counts_top1:
            task, channels_last = self.distiller.task, self.settings.channels_last
            return split_metrics(models, batches, task, self.device, channels_last, self.precision.autocast, self.ctx)
        return split_accuracy(
            models, batches, self.ctx, self.device, self.settings.channels_last, self.precision.autocast
        )

    def student_of(self, weights: str) -> nn.Module:
        """A standalone student of the final ("final") or the EMA ("ema") weights, on the CPU."""
        return standalone_student(self.network, self.ema, weights)

    def log(self, message: str) -> None:
        log_on_main(self.ctx, message)


def running_loss(sums: dict[str, torch.Tensor], seen: torch.Tensor) -> float:
    """The epoch's mean loss so far (a read from the device; NaN before the first counted step)."""
    return float(sums["loss"] / seen.clamp(min=1)) if "loss" in sums else float("nan")


def log_on_main(ctx: DistContext, message: str) -> None:
    """Print a line of the run's log (rank 0 only), below a progress bar if one is shown; flushed,
    so that a log file or pipe has it at once."""
    if ctx.is_main:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
