"""The training loop of ``gpd train``: data, models, optimisation, metrics, checkpoints, export.

The loop knows nothing about GPD: the :class:`~gpd.distill.Distiller` returns a dict
of loss terms and the loop sums them, as in torchvision's reference scripts with
mdistiller's distiller contract. Around that sit the engine's concerns: one process
per device under torchrun (DistributedDataParallel), mixed precision, EMA, exact
resume from a checkpoint, and the two memory modes of a GPD step.
"""

from __future__ import annotations

import random
import sys
import time
from collections import defaultdict
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import OmegaConf
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from gpd.branches import count_branch_blocks, merge_branches
from gpd.config import Config
from gpd.data import DataBundle, build_datasets, synthetic_bundle
from gpd.data.augment import AugmentRecipe
from gpd.data.mixing import build_mixup, mix_batch
from gpd.data.synthetic import SHAPES
from gpd.distill import Distiller
from gpd.distill.pair import DynamicPair
from gpd.errors import CheckpointError, ConfigError, DataError, GPDError
from gpd.export import load_weights, student_payload
from gpd.training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from gpd.training.distributed import (
    DistContext,
    all_reduce_sum,
    average_gradients,
    broadcast_buffers,
    gather_objects,
    resolve_device,
    shard,
)
from gpd.training.evaluate import correct_counts
from gpd.training.precision import Precision
from gpd.training.run_dir import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    STUDENT_FILE,
    TENSORBOARD_DIR,
    MetricsCSV,
    atomic_torch_save,
)
from gpd.training.model_setup import build_student
from gpd.training.pretrained import load_pretrained_file
from gpd.training.static_teacher import build_static_teacher, check_fits
from gpd.sharing.steps import clip_grad_norm_, grad_norm, is_sgd_like
from gpd.training.steps import joint_backward, probed_backward, sequential_backward

DRY_RUN_STEPS = 2
_GRAD_STATS = ("grad_norm", "clipped_frac", "grad_norm_student", "grad_norm_teacher")
_TRAIN_STATS = ("train_seconds", "img_per_s", "skipped_steps", *_GRAD_STATS)
DRY_RUN_IMAGE_SIZE = 32
DRY_RUN_BATCH = 8  # images per process and step in a dry run, at most (ImageNet batches are large)
DRY_RUN_WORKERS = 1  # DataLoader worker processes in a dry run, at most: one still checks that workers work


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def student_forward(core: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The student's forward pass of a trained core (a DynamicPair: GPDModel or UnsharedPair; or the plain student)."""
    return core.forward_student if isinstance(core, DynamicPair) else core


def export_student_of(core: nn.Module) -> nn.Module:
    """A standalone student of the original class from a trained core (branches merged)."""
    student = core.export_student() if isinstance(core, DynamicPair) else merge_branches(core)
    return student.eval()


def canonical_strides(module: nn.Module) -> None:
    """Give parameters whose layout is contiguous anyway (1x1 kernels, one input channel)
    standard strides: ``.to(channels_last)`` leaves odd strides on their size-1 dimensions,
    which the gradients do not follow, and DDP warns about (and copies) every such one."""
    with torch.no_grad():
        for param in module.parameters():
            if param.is_contiguous() and param.stride() != torch.empty(param.shape, device="meta").stride():
                param.data = param.data.clone(memory_format=torch.contiguous_format)


class Trainer:
    """Builds a run from its config and trains it, writing into ``run_dir`` (rank 0 only)."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        dry_run: bool = False,
        *,
        ctx: DistContext | None = None,
        device: torch.device | None = None,
    ) -> None:
        """``dry_run``: a quick check of the whole configuration (DRY_RUN_STEPS steps, small
        images, a synthetic data set and random weights standing in for missing files).
        ``ctx``/``device``: this process's place under torchrun (default: a single process)."""
        self.cfg = cfg
        self.run_dir = run_dir
        self.dry_run = dry_run
        self.ctx = ctx or DistContext()
        self.device = device or resolve_device(cfg.train.device)
        t = cfg.train
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(t.seed)
        self.data = self._build_data()
        self.distiller = self._build_distiller()
        self.core: nn.Module = self.distiller.gpd if self.distiller.gpd is not None else self.distiller.plain  # type: ignore[assignment]
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.distiller.to(self.device).to(memory_format=self.memory_format)
        canonical_strides(self.distiller)
        self.train_module = self._wrap_for_training()
        seed_everything(t.seed + self.ctx.rank)  # each process augments its own samples differently

        self.train_loader, self.sampler, self.test_loader = self._build_loaders()
        self.mixup = build_mixup(cfg.data, self.data.num_classes, t.label_smoothing, self.train_loader.batch_size)
        groups = self.distiller.param_groups(t.weight_decay, adaptive=not is_sgd_like(t.optimizer))
        self.optimizer = create_optimizer_v2(
            groups, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum
        )
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer,
            sched=t.scheduler,
            num_epochs=t.epochs,
            decay_epochs=max(t.epochs // 3, 1),
            decay_milestones=list(t.decay_milestones) or (max(t.epochs // 2, 1),),
            decay_rate=t.decay_rate,
            min_lr=t.min_lr,
            warmup_epochs=t.warmup_epochs,
            warmup_lr=t.lr * 0.01,
            step_on_epochs=False,
            updates_per_epoch=len(self.train_loader),
        )
        self.precision = Precision(t.precision, self.device)
        self.ema = ModelEmaV3(self.core, decay=t.ema_decay, use_warmup=t.ema_warmup) if t.ema else None
        self.trainable = [p for p in self.distiller.parameters() if p.requires_grad]
        # D's tensors that the paper's parameterisation stores differently: their gradient counts
        # as the paper's in the clipped norm (gpd.sharing.steps); empty for plain steps
        self.grad_scales = self.distiller.gpd.grad_scales() if self.distiller.gpd is not None else {}
        self._grad_stats: dict[str, torch.Tensor] = {}
        self.num_updates = 0
        self.start_epoch = 1
        self.best: dict[str, Any] = {"student_acc": None, "epoch": None}
        self.static_teacher_acc: float | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self.metrics = MetricsCSV(run_dir / METRICS_FILE)

    # -- construction ------------------------------------------------------------------

    def _build_data(self) -> DataBundle:
        d = self.cfg.data
        recipe = AugmentRecipe.from_config(d)
        if not self.dry_run:
            return build_datasets(
                d.name, root=d.root, train_subset=d.train_subset, augment=d.augment, image_size=d.image_size,
                download=d.download, seed=self.cfg.train.seed, test_subset=d.test_subset, recipe=recipe,
                image_key=d.image_key, label_key=d.label_key,
            )  # fmt: skip
        size = min(d.image_size or SHAPES.get(d.name, (0, 32))[1], DRY_RUN_IMAGE_SIZE)
        samples = 4 * self._global_batch()
        try:
            return build_datasets(
                d.name, root=d.root, train_subset=samples, image_size=size, test_subset=samples, recipe=recipe,
                image_key=d.image_key, label_key=d.label_key,
            )  # fmt: skip
        except DataError as err:
            self.log(f"dry run: {err} -> using a SYNTHETIC stand-in of random images")
            return synthetic_bundle(d.name, image_size=size, samples=samples, recipe=recipe)

    def _global_batch(self) -> int:
        """train.batch_size, or in a dry run at most DRY_RUN_BATCH images per process."""
        batch = self.cfg.train.batch_size
        return min(batch, DRY_RUN_BATCH * self.ctx.world_size) if self.dry_run else batch

    def _present(self, path: str, key: str) -> bool:
        """Whether a checkpoint file exists; a dry run goes on without it (random weights)."""
        if self.dry_run and not Path(path).exists():
            self.log(f"dry run: {key} {path} does not exist yet -> random weights stand in")
            return False
        return True

    def _build_distiller(self) -> Distiller:
        cfg = self.cfg
        student = build_student(cfg, self.data, dry_run=self.dry_run)
        if cfg.student.checkpoint is not None:  # fine-tuning: D starts equal to this student (IR)
            if self._present(cfg.student.checkpoint, "student.checkpoint"):
                load_weights(student, cfg.student.checkpoint, what="student")
        elif cfg.student.pretrained_file is not None:  # weights from another task, adapted to this data
            if self._present(cfg.student.pretrained_file, "student.pretrained_file"):
                self.log(load_pretrained_file(student, cfg.student.pretrained_file, "student.pretrained_file"))
        check_fits(student, self.data, "student")
        static_teacher = build_static_teacher(cfg, self.data, allow_missing_checkpoint=self.dry_run)
        kd_options = {
            "kd": {"temperature": cfg.kd.temperature, "weight": cfg.kd.weight, "ce_weight": cfg.kd.ce_weight},
            "dkd": {
                "alpha": cfg.dkd.alpha,
                "beta": cfg.dkd.beta,
                "temperature": cfg.dkd.temperature,
                "warmup_epochs": cfg.dkd.warmup_epochs,
                "ce_weight": cfg.dkd.ce_weight,
            },
            "reviewkd": {
                "weight": cfg.reviewkd.weight,
                "mid_channels": cfg.reviewkd.mid_channels,
                "warmup_epochs": cfg.reviewkd.warmup_epochs,
                "ce_weight": cfg.reviewkd.ce_weight,
                "student_preact": cfg.reviewkd.student_preact,
            },
        }.get(cfg.kd.method)
        self.student_params = count_parameters(student)
        return Distiller(
            student,
            static_teacher,
            cfg.kd.method,
            kd_options=kd_options,
            dynamic_teacher=cfg.gpd.enabled,
            ratio=cfg.gpd.ratio,
            sce_weight=cfg.gpd.kd_weight,
            sce_eps=cfg.gpd.sce_eps,
            label_smoothing=cfg.train.label_smoothing,
            noise_std=cfg.gpd.noise_std,
            input_size=self.data.input_size,
            branches=cfg.gpd.branches,
            branch_init=cfg.gpd.branch_init,
            share_parameters=cfg.gpd.share,
            compensate_step=cfg.gpd.compensate_step,
        )

    def _wrap_for_training(self) -> nn.Module:
        """DistributedDataParallel (joint mode) and torch.compile around the distiller, as configured.

        The sequential mode runs two backward passes per step, which DDP's gradient
        hooks cannot follow; it starts from rank 0's weights and averages gradients
        itself after both passes (:func:`~gpd.training.distributed.average_gradients`).
        """
        module: nn.Module = self.distiller
        if self.ctx.enabled:
            if self.cfg.train.memory_mode == "joint":
                ids = [self.device.index] if self.device.type == "cuda" else None
                module = DistributedDataParallel(self.distiller, device_ids=ids, gradient_as_bucket_view=True)
            else:
                broadcast_buffers(self.distiller, self.ctx, parameters=True)
        if self.cfg.train.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        return module

    def _build_loaders(self) -> tuple[DataLoader, DistributedSampler, DataLoader]:
        """Each epoch's order is a permutation seeded by (seed, epoch), split across processes,
        so a resumed run and a run on N processes see the same samples at each global step."""
        t, world = self.cfg.train, self.ctx.world_size
        if t.batch_size % world:
            raise ConfigError(
                f"train.batch_size={t.batch_size} is the global batch and must divide evenly over {world} processes"
            )
        batch = self._global_batch()
        if len(self.data.train) < batch:
            raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {len(self.data.train)} training samples")
        sampler = DistributedSampler(
            self.data.train, num_replicas=world, rank=self.ctx.rank, shuffle=True, seed=t.seed, drop_last=True
        )
        workers = min(self.cfg.data.num_workers, DRY_RUN_WORKERS) if self.dry_run else self.cfg.data.num_workers
        args: dict[str, Any] = dict(num_workers=workers, pin_memory=self.device.type == "cuda")
        train_loader = DataLoader(self.data.train, batch_size=batch // world, sampler=sampler, drop_last=True, **args)
        test_loader = DataLoader(shard(self.data.test, self.ctx), batch_size=t.eval_batch_size, **args)
        return train_loader, sampler, test_loader

    # -- resume ------------------------------------------------------------------------

    def load_state(self, path: Path) -> None:
        """Continue from a checkpoint: weights, optimizer, scheduler, scaler, EMA, counters, RNGs."""
        state = load_checkpoint(path)
        model_state = state["model"]
        result = self.distiller.load_state_dict(model_state, strict=False)
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
        self.best = dict(state["best"])
        self.static_teacher_acc = state.get("static_teacher_acc")
        rng_states = state["rng"]
        if len(rng_states) == self.ctx.world_size:
            self._rng_to_restore = rng_states[self.ctx.rank]
        else:
            self.log(
                f"warning: the checkpoint was written by {len(rng_states)} processes, this run has "
                f"{self.ctx.world_size}: random augmentation continues from fresh seeds (not bit-exact)"
            )
        self.metrics.truncate(int(state["epoch"]))

    # -- one epoch ---------------------------------------------------------------------

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.distiller.train()
        self.sampler.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        seen = torch.zeros((), device=self.device)
        skipped = 0
        self._grad_stats = defaultdict(lambda: torch.zeros((), device=self.device))
        started = time.perf_counter()
        steps = len(self.train_loader)
        bar = tqdm(
            total=steps * self.cfg.train.batch_size,
            desc=f"epoch {epoch}/{self.cfg.train.epochs}",
            unit="img",
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
            disable=None if self.ctx.is_main else True,
        )
        for step, (x, y) in enumerate(self.train_loader):
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            x, targets = mix_batch(self.mixup, x, y)  # Mixup/CutMix: soft targets; y stays the labels
            losses = self.train_step(
                x, targets, epoch_progress=epoch - 1 + step / steps, where=f"epoch {epoch}, step {step}", probe=self._probe_due(step)
            )
            if losses is None:
                skipped += 1
            else:
                step_loss = sum(losses.values())
                for name, value in losses.items():
                    sums[name] += value * y.numel()
                sums["loss"] += step_loss * y.numel()
                seen += y.numel()
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{float(step_loss):.3f}")
            bar.update(y.numel() * self.ctx.world_size)
            if self.dry_run and step + 1 >= DRY_RUN_STEPS:
                break
        bar.close()
        seconds = time.perf_counter() - started
        names = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[n] for n in names] + [seen]), self.ctx).tolist()
        total_seen = max(totals[-1], 1.0)
        result = {name: value / total_seen for name, value in zip(names, totals)}
        result["train_seconds"] = seconds
        result["img_per_s"] = totals[-1] / seconds
        result["skipped_steps"] = skipped
        result.update(self._epoch_grad_stats())
        return result

    def _probe_due(self, step: int) -> bool:
        """Whether this step measures the student's and D's loss gradients separately
        (train.grad_probe_every; not under DDP in the joint mode, whose one backward DDP follows)."""
        every = self.cfg.train.grad_probe_every
        if not every or step % every or self.distiller.gpd is None:
            return False
        return not (self.ctx.enabled and self.cfg.train.memory_mode == "joint")

    def _epoch_grad_stats(self) -> dict[str, float]:
        """Per-epoch means of the gradient norms (one host sync per epoch): the global norm before
        clipping, the fraction of clipped steps, and the probed per-role loss-gradient norms."""
        stats = {name: float(value) for name, value in self._grad_stats.items()}
        steps = max(stats.pop("steps", 0.0), 1.0)
        out = {"grad_norm": stats.get("grad_norm", 0.0) / steps}
        if self.cfg.train.grad_clip:
            out["clipped_frac"] = stats.get("clipped", 0.0) / steps
        probes = stats.get("probes", 0.0)
        if probes:
            out["grad_norm_student"] = stats["grad_norm_student"] / probes
            out["grad_norm_teacher"] = stats["grad_norm_teacher"] / probes
        return out

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, epoch_progress: float, where: str, probe: bool = False
    ) -> dict[str, torch.Tensor] | None:
        """One optimisation step; returns the detached loss terms, or None if the step was skipped.

        ``probe``: run the sequential mode (the same gradients) and measure the gradient
        norm of D's loss terms and of the student's separately."""
        self.optimizer.zero_grad(set_to_none=True)
        p = self.precision
        if probe:
            losses, role_norms = probed_backward(
                self.distiller, x, y, epoch_progress, p.autocast, p.backward, self.trainable, self.grad_scales
            )
            average_gradients(self.trainable, self.ctx)
            loss_scale = p.scaler.get_scale() if p.scaler is not None else 1.0
            self._grad_stats["grad_norm_teacher"] += role_norms[0] / loss_scale
            self._grad_stats["grad_norm_student"] += role_norms[1] / loss_scale
            self._grad_stats["probes"] += 1
        elif self.cfg.train.memory_mode == "joint":
            losses = joint_backward(self.train_module, x, y, epoch_progress, p.autocast, p.backward)
        else:
            losses = sequential_backward(self.distiller, x, y, epoch_progress, p.autocast, p.backward)
            average_gradients(self.trainable, self.ctx)  # DDP's hooks follow one backward per step only
        losses = {name: value.detach().float() for name, value in losses.items()}
        total = sum(losses.values())
        bad = all_reduce_sum((~torch.isfinite(total)).float().reshape(1), self.ctx)
        if bad.item() > 0:
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
            if self.cfg.train.on_nonfinite == "skip":
                self.log(f"warning: non-finite loss at {where} ({terms}); step skipped (train.on_nonfinite=skip)")
                self.optimizer.zero_grad(set_to_none=True)
                return None
            raise GPDError(
                f"the loss became non-finite at {where} ({terms}); the last good checkpoint is kept; lower train.lr, "
                "set train.grad_clip, or pass train.on_nonfinite=skip to drop such steps"
            )
        self.precision.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip
        if clip:  # the global norm as the paper's optimizer sees it (gpd.sharing.steps)
            norm = clip_grad_norm_(self.trainable, clip, self.grad_scales)
            self._grad_stats["clipped"] += (norm > clip).float()
        else:
            norm = grad_norm(self.trainable, self.grad_scales)
        self._grad_stats["grad_norm"] += norm.to(self.device)
        self._grad_stats["steps"] += 1
        self.precision.step(self.optimizer)
        self.num_updates += 1
        self.scheduler.step_update(num_updates=self.num_updates)
        if self.ema is not None:
            self.ema.update(self.core, step=self.num_updates)
        return losses

    def evaluate(self) -> dict[str, float]:
        """Test accuracy of the student, D, their EMA and the static teacher (once: it is frozen).

        Every process evaluates its own share of the test set with rank 0's BatchNorm
        statistics; the counts are summed, so the accuracy is exact for any process count."""
        self.distiller.eval()
        broadcast_buffers(self.distiller, self.ctx)
        models: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"student": self.distiller.student_logits}
        if self.distiller.has_dynamic_teacher:
            models["teacher"] = self.distiller.teacher_logits
        if self.distiller.static_teacher is not None and self.static_teacher_acc is None:
            models["static_teacher"] = self.distiller.static_teacher
        if self.ema is not None:
            broadcast_buffers(self.ema, self.ctx)
            models["ema_student"] = student_forward(self.ema.module)
            if isinstance(self.ema.module, DynamicPair):
                models["ema_teacher"] = self.ema.module.forward_teacher
        batches = islice(self.test_loader, DRY_RUN_STEPS) if self.dry_run else self.test_loader
        correct, total = correct_counts(
            models, batches, self.device, self.cfg.train.channels_last, autocast=self.precision.autocast
        )
        names = list(correct)
        counts = all_reduce_sum(torch.stack([correct[n] for n in names] + [total]), self.ctx).tolist()
        result = {name: 100.0 * c / max(counts[-1], 1) for name, c in zip(names, counts)}
        self.static_teacher_acc = result.pop("static_teacher", self.static_teacher_acc)
        return result

    # -- the run -----------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message, file=sys.stdout)

    def describe(self) -> None:
        d = self.distiller
        self.log(f"run directory: {self.run_dir}")
        self.log(
            f"data: {self.data.name}, {len(self.data.train)} train / {len(self.data.test)} test images of "
            f"{'x'.join(map(str, self.data.input_size))}, {self.data.num_classes} classes"
        )
        line = f"student: {self.cfg.model.student}, {self.student_params / 1e6:.3f}M parameters"
        if d.gpd is not None:
            r = d.gpd.report
            line += (
                f"; dynamic teacher at ratio {r.ratio:g}: {count_parameters(d.gpd.teacher) / 1e6:.3f}M parameters, "
                f"verified equal to the student (relative error {r.teacher_error:.1e})"
            )
            if r.noise_std:
                line += (
                    f", then symmetry-breaking noise of relative size {r.noise_std:g} added to its copies "
                    f"(D now differs from the student by {r.noise_error:.1e}; gpd.noise_std)"
                )
            if not d.shares_parameters:
                line += ", separate parameters (gpd.share=false)"
            elif self.cfg.gpd.compensate_step:
                line += ", plain networks' steps (gpd.compensate_step=true)"
            else:
                line += ", the paper's per-layer steps"
        else:
            line += "; trained alone (gpd.enabled=false)"
        if d.static_teacher is not None:
            line += (
                f"; static teacher {self.cfg.teacher.model or self.cfg.teacher.checkpoint} "
                f"({count_parameters(d.static_teacher) / 1e6:.3f}M parameters, frozen), KD method {self.cfg.kd.method}"
            )
        if self.cfg.gpd.branches != "none":
            trained = d.student_module()
            line += f"; {count_branch_blocks(trained)} convolutions trained as six-branch blocks ({self.cfg.gpd.branches})"
        self.log(line)
        t = self.cfg.train
        engine = f"device: {self.device}, {torch.get_num_threads()} threads, precision {t.precision}, memory mode {t.memory_mode}"
        if self.ctx.enabled:
            engine += f", {self.ctx.world_size} processes ({t.batch_size // self.ctx.world_size} images each per step)"
        if self.ema is not None:
            engine += f", EMA decay {t.ema_decay:g}"
        if t.compile:
            engine += ", torch.compile"
        self.log(engine)

    def fit(self) -> dict[str, Any]:
        last_epoch = 1 if self.dry_run else self.cfg.train.epochs
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
        writer = self._tensorboard()
        run_started = time.perf_counter()
        row: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, last_epoch + 1):
                row = self.run_epoch(epoch)
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch" and isinstance(value, (int, float)):
                            writer.add_scalar(_tensorboard_tag(key), value, epoch)
                    writer.flush()
        finally:
            if writer is not None:
                writer.close()
        exported = self.export(row)
        total = time.perf_counter() - run_started
        self.log(
            f"done in {total:.1f} s: student test accuracy {row['student_acc']:.2f}%; exported the {exported} "
            f"weights to {self.run_dir / STUDENT_FILE}"
        )
        return {**row, "total_seconds": total, "exported": exported}

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        epoch_started = time.perf_counter()
        train = self.train_one_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]  # as of the epoch's last step
        acc = self.evaluate()
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train["loss"] if "loss" in train else float("nan"),
            **{f"loss_{k}": v for k, v in train.items() if k not in ("loss", *_TRAIN_STATS)},
            "student_acc": acc["student"],
            "teacher_acc": acc.get("teacher", ""),
            "gap": acc["teacher"] - acc["student"] if "teacher" in acc else "",
            "static_teacher_acc": self.static_teacher_acc if self.static_teacher_acc is not None else "",
        }
        if self.ema is not None:
            row["ema_student_acc"] = acc["ema_student"]
            row["ema_teacher_acc"] = acc.get("ema_teacher", "")
        if self.cfg.train.on_nonfinite == "skip":
            row["skipped_steps"] = train["skipped_steps"]
        row.update({k: train[k] for k in _GRAD_STATS if k in train})
        row["img_per_s"] = train["img_per_s"]
        if self.best["student_acc"] is None or acc["student"] > self.best["student_acc"]:
            self.best = {"student_acc": acc["student"], "epoch": epoch}
        self.save_checkpoint(epoch)
        row["seconds"] = time.perf_counter() - epoch_started
        if self.ctx.is_main:
            self.metrics.write(row)
        summary = f"epoch {epoch}/{self.cfg.train.epochs}  lr {lr:.4g}  loss {row['train_loss']:.4f}  student {acc['student']:.2f}%"
        if "teacher" in acc:
            summary += f"  teacher {acc['teacher']:.2f}%  gap {row['gap']:+.2f}"
        if self.ema is not None:
            summary += f"  EMA student {acc['ema_student']:.2f}%"
        if self.static_teacher_acc is not None:
            summary += f"  static teacher {self.static_teacher_acc:.2f}%"
        summary += f"  {train['img_per_s']:.0f} img/s  {row['seconds']:.1f} s"
        self.log(summary)
        return row

    def _tensorboard(self) -> Any:
        if not self.ctx.is_main or self.dry_run:
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import

        return SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=self.start_epoch)

    def save_checkpoint(self, epoch: int) -> None:
        """Rank 0 writes the full state after each epoch (atomically); every process adds its RNG state."""
        rng = gather_objects(capture_rng(), self.ctx)
        if not self.ctx.is_main:
            return
        model_state = {k: v for k, v in self.distiller.state_dict().items() if not k.startswith("static_teacher.")}
        state = {
            "config": OmegaConf.to_container(OmegaConf.structured(self.cfg)),
            "epoch": epoch,
            "num_updates": self.num_updates,
            "best": self.best,
            "static_teacher_acc": self.static_teacher_acc,
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
        }
        save_checkpoint(state, self.run_dir / CHECKPOINT_FILE)

    def export(self, final_row: dict[str, Any]) -> str:
        """Write student.pt from the final weights or their EMA, whichever has the higher test
        accuracy at the last epoch; returns which ("final" or "EMA")."""
        use_ema = self.ema is not None and final_row["ema_student_acc"] > final_row["student_acc"]
        which = "EMA" if use_ema else "final"
        if not self.ctx.is_main:
            return which
        core = self.ema.module if use_ema else self.core  # type: ignore[union-attr]
        student = export_student_of(core).to(memory_format=torch.contiguous_format).cpu()
        metadata = {
            "data": self.data.name,
            "input_size": list(self.data.input_size),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "class_names": list(self.data.class_names),
            "student_acc": final_row["ema_student_acc" if use_ema else "student_acc"],
            "gpd_ratio": self.cfg.gpd.ratio if self.cfg.gpd.enabled else None,
            "weights": "ema" if use_ema else "final",
        }
        atomic_torch_save(student_payload(student, **metadata), self.run_dir / STUDENT_FILE)
        return which


def _tensorboard_tag(column: str) -> str:
    """Group metrics.csv columns into TensorBoard sections."""
    if column.endswith("_acc"):
        return f"accuracy/{column.removesuffix('_acc')}"
    if column.startswith("loss_") or column == "train_loss":
        return f"loss/{column.removeprefix('loss_')}"
    return f"train/{column}"


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
        trainer.load_state(run_dir / CHECKPOINT_FILE)
    return trainer.fit()
