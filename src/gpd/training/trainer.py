"""The trainer of ``gpd train``: builds a run from its config, resumes it, and trains it.

:class:`Trainer` puts the parts together: the objects come from the pure builders
(:mod:`gpd.training.builders`), the run's progress is a :class:`~gpd.training.state.TrainState`,
the epochs and steps run in the :class:`~gpd.training.loop.TrainLoop` (which gets its
settings, not the config), and the files are written by the callbacks
(:mod:`gpd.training.callbacks`) into the run directory's :class:`~gpd.io.layout.RunLayout`;
the checkpoint is written and read by one pair (:mod:`gpd.io.checkpoint`). Around the loop
sit the engine's concerns: one process per device under torchrun (DistributedDataParallel),
mixed precision, EMA, exact resume from a checkpoint, the two memory modes of a GPD step,
and the :class:`~gpd.training.policy.RunPolicy` (a dry run's caps).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3
from torch import nn

from gpd.config import Config
from gpd.data import DataBundle
from gpd.data.mixing import build_mixup
from gpd.deprecated import warn_renamed
from gpd.errors import ConfigError
from gpd.io.checkpoint import load_training_state
from gpd.io.layout import RunLayout
from gpd.training.builders import (
    build_data,
    build_distiller,
    build_loaders,
    build_optimization,
    canonical_strides,
    find_unused_parameters,
    global_batch,
    seed_everything,
    wrap_for_training,
)
from gpd.training.callbacks import Callback, Callbacks, run_callbacks
from gpd.training.describe import describe_run
from gpd.training.distributed import DistContext, resolve_device
from gpd.training.ema import ema_decay_per_step
from gpd.training.grad_stats import GradStats
from gpd.training.loop import LoopSettings, TrainLoop, log_on_main
from gpd.training.nonfinite import NonFiniteGuard
from gpd.training.policy import RunPolicy, as_policy
from gpd.training.precision import Precision
from gpd.training.selection import WeightSelection
from gpd.training.state import RunView, TrainState
from gpd.training.static_teacher import fingerprint
from gpd.training.sync_bn import convert_sync_batchnorm


class Trainer:
    """Builds a run from its config and trains it, writing into ``run_dir`` (rank 0 only).

    ``state``: the run's progress; ``loop``: what trains it; ``run``: what the callbacks read."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        dry_run: bool | RunPolicy = False,
        *,
        ctx: DistContext | None = None,
        device: torch.device | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        """``dry_run``: the run's :class:`RunPolicy`; True is :data:`~gpd.training.policy.DRY_RUN`, a
        quick check of the whole configuration (a couple of steps, small images, a synthetic data set
        and random weights standing in for missing files). ``ctx``/``device``: this process's place
        under torchrun (default: a single process). ``callbacks``: what the run writes (default:
        :func:`~gpd.training.callbacks.run_callbacks` of the run directory), in an order that keeps
        each one's :attr:`~gpd.training.callbacks.Callback.after` (else ValueError)."""
        self.cfg = cfg
        self.run_dir = run_dir
        self.layout = RunLayout(run_dir)
        self.policy = as_policy(dry_run)
        self.ctx = ctx = ctx or DistContext()
        self.device = device = device or resolve_device(cfg.train.device)
        t, policy = cfg.train, self.policy
        self.threads_reason = ""  # why torch uses its number of threads (set by launch(), see threads.py)
        self.host_memory_reason = ""  # what happens to freed host memory (set by launch(), see host_memory.py)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(t.seed)
        self.data = data = build_data(cfg, ctx, policy, self.log)
        self.distiller, self.student_params = build_distiller(cfg, data, policy.stand_ins, self.log)
        distiller = self.distiller
        self.network = network = distiller.network  # what EMA and export follow
        self.synced_batchnorms = convert_sync_batchnorm(network, device) if t.sync_bn and ctx.enabled else 0
        distiller.to(device).to(memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
        canonical_strides(distiller)
        self.find_unused_parameters = find_unused_parameters(distiller, cfg, ctx)
        train_module = wrap_for_training(distiller, cfg, ctx, device, self.find_unused_parameters)
        seed_everything(t.seed + ctx.rank)  # each process augments its own samples differently

        loaders = build_loaders(cfg, data, ctx, device, policy)
        mixup = build_mixup(cfg.data, data.num_classes, t.label_smoothing, loaders.train.batch_size)
        optimizer, scheduler = build_optimization(cfg, distiller, len(loaders.train))
        precision = Precision(t.precision, device)
        self.ema_decay = ema_decay_per_step(
            decay=t.ema_decay, epochs=t.ema_epochs, images=t.ema_images,
            images_per_step=global_batch(cfg, ctx, policy), steps_per_epoch=len(loaders.train),
        )  # fmt: skip
        ema = ModelEmaV3(network, decay=self.ema_decay, use_warmup=t.ema_warmup) if t.ema else None
        selection = WeightSelection(has_val=data.val is not None, has_ema=ema is not None)
        teacher = distiller.static_teacher
        self.state = TrainState(static_teacher_fingerprint=fingerprint(teacher) if teacher is not None else None)
        self.run = RunView(
            ctx=ctx, config=lambda: config_container(cfg), description=run_description(cfg, data),
            distiller=distiller, network=network, optimizer=optimizer, scheduler=scheduler, precision=precision,
            ema=ema, selection=selection,
        )  # fmt: skip
        self.callbacks = Callbacks(run_callbacks(self.layout, policy) if callbacks is None else callbacks, self.run)
        self.loop = TrainLoop(
            loop_settings(cfg, policy), self.state, distiller=distiller, train_module=train_module, network=network,
            loaders=loaders, optimizer=optimizer, scheduler=scheduler, precision=precision,
            guard=NonFiniteGuard(t.on_nonfinite, t.nonfinite_check_every, ctx, device),
            grad_stats=GradStats(device, clipping=bool(t.grad_clip)), selection=selection, ema=ema, mixup=mixup,
            callbacks=self.callbacks, ctx=ctx, device=device,
        )  # fmt: skip

    @property
    def core(self) -> nn.Module:
        """Deprecated: :attr:`network`."""
        warn_renamed("Trainer.core", "Trainer.network")
        return self.network

    def load_state(self, path: Path) -> None:
        """Continue from a checkpoint: weights, optimizer, scheduler, scaler, EMA, counters, RNGs,
        the selected weights and the metrics rows (metrics.csv is rewritten from them)."""
        load_training_state(
            path, self.state, self.run.checkpointed(), rank=self.ctx.rank, world_size=self.ctx.world_size, log=self.log
        )
        self.callbacks.on_resume(self.state)

    def describe(self) -> None:
        for line in describe_run(self):
            self.log(line)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, export student.pt; the last epoch's row, the run's time and the export."""
        last_epoch = self.policy.epochs(self.cfg.train.epochs)
        start = self.state.next_epoch
        if start > last_epoch:
            raise ConfigError(
                f"the run in {self.run_dir} already finished its {self.cfg.train.epochs} epochs; "
                "to train longer, resume with a larger train.epochs=N"
            )
        self.describe()
        if start > 1:
            self.log(f"resuming after epoch {start - 1} (step {self.state.num_updates})")
        run_started = time.perf_counter()
        row = self.loop.run_epochs(last_epoch)
        total = time.perf_counter() - run_started
        selection = self.run.selection
        choice = selection.choice
        assert choice is not None
        exported = "EMA" if choice.weights == "ema" else "final"
        self.log(
            f"done in {total:.1f} s: exported the {exported} weights of epoch {choice.epoch} to "
            f"{self.layout.student} (student test {self.loop.headline} {choice.test_acc:.2f}%"
            + (f", validation {choice.val_acc:.2f}%" if choice.val_acc is not None else "")
            + f"; {selection.rule})"
        )
        return {**row, "total_seconds": total, "exported": exported, "exported_epoch": choice.epoch}

    def log(self, message: str) -> None:
        log_on_main(self.ctx, message)


def loop_settings(cfg: Config, policy: RunPolicy) -> LoopSettings:
    """What the loop is told of the config: ``train.*`` and the policy's caps."""
    t = cfg.train
    return LoopSettings(
        epochs=t.epochs, batch_size=t.batch_size, memory_mode=t.memory_mode, grad_clip=t.grad_clip,
        grad_probe_every=t.grad_probe_every, on_nonfinite=t.on_nonfinite, channels_last=t.channels_last,
        policy=policy, log_interval_s=t.log_interval_s,
    )  # fmt: skip


def config_container(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain containers, as the checkpoint keeps it."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def run_description(cfg: Config, data: DataBundle) -> dict[str, Any]:
    """What student.pt records of the run: the data it expects and the ratio of its dynamic teacher."""
    return {
        "data": data.name,
        "input_size": list(data.input_size),
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": list(data.class_names),
        "gpd_ratio": cfg.gpd.ratio if cfg.gpd.enabled else None,
        "task": data.task,
        "preprocessor": data.preprocessor,
    }


def train(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    ctx: DistContext | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train the run described by ``cfg`` into ``run_dir`` (continuing its checkpoint if
    ``resume``) and return the last epoch's metrics."""
    trainer = Trainer(cfg, run_dir, ctx=ctx, device=device)
    if resume:
        trainer.load_state(trainer.layout.checkpoint)
    return trainer.fit()
