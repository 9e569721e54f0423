"""The trainer of ``gpd train``: builds a run from its config, resumes it, and trains it.

:class:`Trainer` puts the parts together: the objects come from the pure builders
(:mod:`gpd.training.builders`), the epochs and steps run in the loop
(:mod:`gpd.training.loop`), and the files are written by the callbacks
(:mod:`gpd.training.callbacks`) into the run directory's :class:`~gpd.io.layout.RunLayout`.
Around the loop sit the engine's concerns: one process per device under torchrun
(DistributedDataParallel), mixed precision, EMA, exact resume from a checkpoint, the two
memory modes of a GPD step, and the :class:`~gpd.training.policy.RunPolicy` (a dry run's caps).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gpd.config import Config
from gpd.data.mixing import build_mixup
from gpd.deprecated import upgrade_rows
from gpd.errors import CheckpointError, ConfigError
from gpd.io.checkpoint import load_checkpoint
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
from gpd.training.callbacks import Callback, run_callbacks
from gpd.training.describe import describe_run
from gpd.training.distributed import DistContext, resolve_device
from gpd.training.ema import ema_decay_per_step
from gpd.training.grad_stats import GradStats
from gpd.training.loop import TrainLoop
from gpd.training.nonfinite import NonFiniteGuard
from gpd.training.policy import RunPolicy, as_policy
from gpd.training.precision import Precision
from gpd.training.rng import restore_rng
from gpd.training.selection import WeightSelection, standalone_student
from gpd.training.static_teacher import fingerprint
from gpd.training.sync_bn import convert_sync_batchnorm


class Trainer(TrainLoop):
    """Builds a run from its config and trains it, writing into ``run_dir`` (rank 0 only)."""

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
        :func:`~gpd.training.callbacks.run_callbacks` of the run directory)."""
        self.cfg = cfg
        self.run_dir = run_dir
        self.layout = RunLayout(run_dir)
        self.policy = as_policy(dry_run)
        self.ctx = ctx or DistContext()
        self.device = device or resolve_device(cfg.train.device)
        t, policy = cfg.train, self.policy
        self.threads_reason = ""  # why torch uses its number of threads (set by launch(), see threads.py)
        self.host_memory_reason = ""  # what happens to freed host memory (set by launch(), see host_memory.py)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(t.seed)
        self.data = build_data(cfg, self.ctx, policy, self.log)
        self.distiller, self.student_params = build_distiller(cfg, self.data, policy.stand_ins, self.log)
        self.core: nn.Module = self.distiller.network
        self.synced_batchnorms = convert_sync_batchnorm(self.core, self.device) if t.sync_bn and self.ctx.enabled else 0
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.distiller.to(self.device).to(memory_format=self.memory_format)
        canonical_strides(self.distiller)
        self.find_unused_parameters = find_unused_parameters(self.distiller, cfg, self.ctx)
        self.train_module = wrap_for_training(self.distiller, cfg, self.ctx, self.device, self.find_unused_parameters)
        seed_everything(t.seed + self.ctx.rank)  # each process augments its own samples differently

        self.train_loader, self.sampler, self.test_loader, self.val_loader = build_loaders(
            cfg, self.data, self.ctx, self.device, policy
        )
        self.mixup = build_mixup(cfg.data, self.data.num_classes, t.label_smoothing, self.train_loader.batch_size)
        self.optimizer, self.scheduler = build_optimization(cfg, self.distiller, len(self.train_loader))
        self.precision = Precision(t.precision, self.device)
        self.ema_decay = ema_decay_per_step(
            decay=t.ema_decay, epochs=t.ema_epochs, images=t.ema_images,
            images_per_step=global_batch(cfg, self.ctx, policy), steps_per_epoch=len(self.train_loader),
        )  # fmt: skip
        self.ema = ModelEmaV3(self.core, decay=self.ema_decay, use_warmup=t.ema_warmup) if t.ema else None
        self.trainable = [p for p in self.distiller.parameters() if p.requires_grad]
        # D's tensors that the paper's parameterisation stores differently: their gradient counts
        # as the paper's in the clipped norm (gpd.sharing.steps); empty for plain steps
        self.grad_scales = self.distiller.grad_scales()
        self.grad_stats = GradStats(self.device, clipping=bool(t.grad_clip))
        self.guard = NonFiniteGuard(t.on_nonfinite, t.nonfinite_check_every, self.ctx, self.device)
        self.selection = WeightSelection(has_val=self.data.val is not None, has_ema=self.ema is not None)
        teacher = self.distiller.static_teacher
        self.static_teacher_fingerprint = fingerprint(teacher) if teacher is not None else None
        self.num_updates = 0
        self.start_epoch = 1
        self.static_teacher_acc: float | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []  # every epoch's metrics row, also kept in the checkpoint
        self.callbacks = run_callbacks(self.layout, policy) if callbacks is None else callbacks

    def _no_sync(self) -> AbstractContextManager[Any]:
        """DDP's no_sync for D's half of a sequential step (nothing outside torchrun)."""
        ddp = getattr(self.train_module, "_orig_mod", self.train_module)  # under torch.compile
        return ddp.no_sync() if isinstance(ddp, DistributedDataParallel) else nullcontext()

    # -- resume ------------------------------------------------------------------------

    def load_state(self, path: Path) -> None:
        """Continue from a checkpoint: weights, optimizer, scheduler, scaler, EMA, counters, RNGs,
        the selected weights and the metrics rows (metrics.csv is rewritten from them)."""
        state = load_checkpoint(path)
        self._check_same_static_teacher(state, path)
        result = self.distiller.load_state_dict(state["model"], strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("static_teacher.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"{path} holds another model than this config builds (missing {missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}); resume with the run's own config.yaml"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("scaler", {}))
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"{path} has no EMA weights but train.ema=true; resume with train.ema=false")
            self.ema.load_state_dict(state["ema"])
        self.num_updates = int(state["num_updates"])
        self.start_epoch = int(state["epoch"]) + 1
        if state.get("selection") is not None:
            self.selection.load_state_dict(state["selection"])
        self.static_teacher_acc = state.get("static_teacher_acc")
        rng_states = state["rng"]
        if len(rng_states) == self.ctx.world_size:
            self._rng_to_restore = rng_states[self.ctx.rank]
        else:
            self.log(
                f"warning: the checkpoint was written by {len(rng_states)} processes, this run has "
                f"{self.ctx.world_size}: random augmentation continues from fresh seeds (not bit-exact)"
            )
        if self.ctx.is_main and "metrics" in state:  # the rows of the epochs the checkpoint holds
            self.rows = upgrade_rows([dict(row) for row in state["metrics"]], f"the metrics rows of {path}")
        for callback in self.callbacks:  # metrics.csv is rewritten from them
            callback.on_resume(self, state, path)

    def _check_same_static_teacher(self, state: dict[str, Any], path: Path) -> None:
        recorded, now = state.get("static_teacher_fingerprint"), self.static_teacher_fingerprint
        if recorded is not None and recorded != now:
            raise CheckpointError(
                f"{path} was trained against other static teacher weights than teacher.checkpoint holds now "
                f"(fingerprint {recorded[:12]} != {str(now)[:12]}); resume with the original teacher file, "
                "or start a new run"
            )

    # -- the run -----------------------------------------------------------------------

    def describe(self) -> None:
        for line in describe_run(self):
            self.log(line)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, export student.pt; the last epoch's row, the run's time and the export."""
        last_epoch = self.policy.epochs(self.cfg.train.epochs)
        if self.start_epoch > last_epoch:
            raise ConfigError(
                f"the run in {self.run_dir} already finished its {self.cfg.train.epochs} epochs; "
                "to train longer, resume with a larger train.epochs=N"
            )
        self.describe()
        if self.start_epoch > 1:
            self.log(f"resuming after epoch {self.start_epoch - 1} (step {self.num_updates})")
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
        run_started = time.perf_counter()
        row = self.run_epochs(last_epoch)
        total = time.perf_counter() - run_started
        choice = self.selection.choice
        assert choice is not None
        exported = "EMA" if choice.weights == "ema" else "final"
        self.log(
            f"done in {total:.1f} s: exported the {exported} weights of epoch {choice.epoch} to "
            f"{self.layout.student} (student test accuracy {choice.test_acc:.2f}%"
            + (f", validation {choice.val_acc:.2f}%" if choice.val_acc is not None else "")
            + f"; {self.selection.rule})"
        )
        return {**row, "total_seconds": total, "exported": exported, "exported_epoch": choice.epoch}

    def _student_of(self, weights: str) -> nn.Module:
        """A standalone student of the final ("final") or the EMA ("ema") weights, on the CPU."""
        return standalone_student(self.core, self.ema, weights)

    def selected_student(self) -> nn.Module:
        """The standalone student of the weights the selection chose (what student.pt holds)."""
        return self.selection.student(self._student_of)


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
