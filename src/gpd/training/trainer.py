"""The training loop of ``gpd train``: data, models, optimisation, metrics, checkpoints, export.

The loop knows nothing about GPD: the :class:`~gpd.distill.Distiller` returns a dict
of loss terms and the loop sums them, as in torchvision's reference scripts with
mdistiller's distiller contract. Around that sit the engine's concerns: one process
per device under torchrun (DistributedDataParallel), mixed precision, EMA, exact
resume from a checkpoint, and the two memory modes of a GPD step.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from gpd.branches import merge_branches
from gpd.config import Config
from gpd.data.mixing import build_mixup, mix_batch
from gpd.deprecated import upgrade_rows
from gpd.distill.pair import DynamicPair
from gpd.errors import CheckpointError, ConfigError
from gpd.io import checkpoint as checkpoint_io
from gpd.io.layout import RunLayout
from gpd.io.metrics import MetricsCSV
from gpd.io.student import save_student, student_payload
from gpd.sharing.steps import clip_grad_norm_, grad_norm
from gpd.training.builders import (
    DRY_RUN_STEPS,
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
from gpd.training.describe import describe_run
from gpd.training.distributed import DistContext, all_reduce_sum, broadcast_buffers, gather_objects, resolve_device
from gpd.training.ema import ema_decay_per_step
from gpd.training.evaluate import correct_counts
from gpd.training.nonfinite import NonFiniteGuard
from gpd.training.precision import Precision
from gpd.training.rng import capture_rng, restore_rng
from gpd.training.selection import WeightSelection
from gpd.training.static_teacher import fingerprint
from gpd.training.steps import joint_backward, probed_backward, sequential_backward
from gpd.training.sync_bn import convert_sync_batchnorm

_GRAD_STATS = ("grad_norm", "clipped_frac", "grad_norm_student", "grad_norm_dynamic")
_TRAIN_STATS = ("train_seconds", "img_per_s", "skipped_steps", *_GRAD_STATS)


def student_forward(core: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The student's forward pass of a trained core (a DynamicPair: GPDModel or UnsharedPair; or the plain student)."""
    return core.forward_student if isinstance(core, DynamicPair) else core


def export_student_of(core: nn.Module) -> nn.Module:
    """A standalone student of the original class from a trained core (branches merged)."""
    student = core.export_student() if isinstance(core, DynamicPair) else merge_branches(core)
    return student.eval()


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
        self.layout = RunLayout(run_dir)
        self.dry_run = dry_run
        self.ctx = ctx or DistContext()
        self.device = device or resolve_device(cfg.train.device)
        t = cfg.train
        self.threads_reason = ""  # why torch uses its number of threads (set by launch(), see threads.py)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(t.seed)
        self.data = build_data(cfg, self.ctx, dry_run, self.log)
        self.distiller, self.student_params = build_distiller(cfg, self.data, dry_run, self.log)
        self.core: nn.Module = self.distiller.gpd if self.distiller.gpd is not None else self.distiller.plain  # type: ignore[assignment]
        self.synced_batchnorms = convert_sync_batchnorm(self.core, self.device) if t.sync_bn and self.ctx.enabled else 0
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.distiller.to(self.device).to(memory_format=self.memory_format)
        canonical_strides(self.distiller)
        self.find_unused_parameters = find_unused_parameters(self.distiller, cfg, self.ctx)
        self.train_module = wrap_for_training(self.distiller, cfg, self.ctx, self.device, self.find_unused_parameters)
        seed_everything(t.seed + self.ctx.rank)  # each process augments its own samples differently

        self.train_loader, self.sampler, self.test_loader, self.val_loader = build_loaders(
            cfg, self.data, self.ctx, self.device, dry_run
        )
        self.mixup = build_mixup(cfg.data, self.data.num_classes, t.label_smoothing, self.train_loader.batch_size)
        self.optimizer, self.scheduler = build_optimization(cfg, self.distiller, len(self.train_loader))
        self.precision = Precision(t.precision, self.device)
        self.ema_decay = ema_decay_per_step(
            decay=t.ema_decay, epochs=t.ema_epochs, images=t.ema_images,
            images_per_step=global_batch(cfg, self.ctx, dry_run), steps_per_epoch=len(self.train_loader),
        )  # fmt: skip
        self.ema = ModelEmaV3(self.core, decay=self.ema_decay, use_warmup=t.ema_warmup) if t.ema else None
        self.trainable = [p for p in self.distiller.parameters() if p.requires_grad]
        # D's tensors that the paper's parameterisation stores differently: their gradient counts
        # as the paper's in the clipped norm (gpd.sharing.steps); empty for plain steps
        self.grad_scales = self.distiller.gpd.grad_scales() if self.distiller.gpd is not None else {}
        self._grad_stats: dict[str, torch.Tensor] = self._zeros()
        self.guard = NonFiniteGuard(t.on_nonfinite, t.nonfinite_check_every, self.ctx, self.device)
        self.selection = WeightSelection(has_val=self.data.val is not None, has_ema=self.ema is not None)
        teacher = self.distiller.static_teacher
        self.static_teacher_fingerprint = fingerprint(teacher) if teacher is not None else None
        self.num_updates = 0
        self.start_epoch = 1
        self.static_teacher_acc: float | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self.metrics = MetricsCSV(self.layout.metrics)
        self.rows: list[dict[str, Any]] = []  # every epoch's metrics row, also kept in the checkpoint

    # -- construction ------------------------------------------------------------------

    def _no_sync(self) -> AbstractContextManager[Any]:
        """DDP's no_sync for D's half of a sequential step (nothing outside torchrun)."""
        ddp = getattr(self.train_module, "_orig_mod", self.train_module)  # under torch.compile
        return ddp.no_sync() if isinstance(ddp, DistributedDataParallel) else nullcontext()

    # -- resume ------------------------------------------------------------------------

    def load_state(self, path: Path) -> None:
        """Continue from a checkpoint: weights, optimizer, scheduler, scaler, EMA, counters, RNGs,
        the selected weights and the metrics rows (metrics.csv is rewritten from them)."""
        state = checkpoint_io.load_checkpoint(path)
        self._check_same_static_teacher(state, path)
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
        if self.ctx.is_main:
            if "metrics" in state:  # the rows of the epochs the checkpoint holds: no gap, no extra row
                self.rows = upgrade_rows([dict(row) for row in state["metrics"]], f"the metrics rows of {path}")
                self.metrics.rewrite(self.rows)
            else:  # older checkpoints hold no rows: keep the file's rows up to the checkpoint's epoch
                self.metrics.truncate(int(state["epoch"]))

    def _check_same_static_teacher(self, state: dict[str, Any], path: Path) -> None:
        recorded, now = state.get("static_teacher_fingerprint"), self.static_teacher_fingerprint
        if recorded is not None and recorded != now:
            raise CheckpointError(
                f"{path} was trained against other static teacher weights than teacher.checkpoint holds now "
                f"(fingerprint {recorded[:12]} != {str(now)[:12]}); resume with the original teacher file, "
                "or start a new run"
            )

    # -- one epoch ---------------------------------------------------------------------

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data. Nothing is read back from the device per step: the
        loss sums, gradient statistics and the non-finite flag stay there until the flag's
        periodic read (``train.nonfinite_check_every``) and the epoch's end."""
        self.distiller.train()
        self.sampler.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = self._zeros()
        seen = torch.zeros((), device=self.device)
        skipped = 0
        self._grad_stats = self._zeros()
        self.guard.reset()
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
                x,
                targets,
                epoch_progress=epoch - 1 + step / steps,
                where=f"epoch {epoch}, step {step}",
                probe=self._probe_due(step),
            )
            if losses is None:
                skipped += 1
            else:
                step_loss = sum(losses.values())
                for name, value in losses.items():
                    sums[name] += value * y.numel()
                sums["loss"] += step_loss * y.numel()
                seen += y.numel()
            if self.guard.due():
                self.guard.raise_if_flagged()  # the periodic read; the loss shown is the epoch's running mean
                bar.set_postfix(loss=f"{float(sums['loss'] / seen.clamp(min=1)):.3f}")
            bar.update(y.numel() * self.ctx.world_size)
            if self.dry_run and step + 1 >= DRY_RUN_STEPS:
                break
        bar.close()
        self.guard.raise_if_flagged()  # before anything of this epoch is evaluated or written
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

    def _zeros(self) -> defaultdict[str, torch.Tensor]:
        """Accumulators that stay on the device (read once per epoch). The factory closes over the
        device only: a closure over ``self`` would make the trainer a reference cycle, whose
        models then wait for Python's rare full collections to be freed."""
        device = self.device
        return defaultdict(lambda: torch.zeros((), device=device))

    def _probe_due(self, step: int) -> bool:
        """Whether this step measures the student's and D's loss gradients separately
        (train.grad_probe_every; not under DDP, whose hooks follow the wrapper's backward passes)."""
        every = self.cfg.train.grad_probe_every
        if not every or step % every or self.distiller.gpd is None:
            return False
        return not self.ctx.enabled

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
            out["grad_norm_dynamic"] = stats["grad_norm_dynamic"] / probes
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
            loss_scale = p.scaler.get_scale() if p.scaler is not None else 1.0
            self._grad_stats["grad_norm_dynamic"] += role_norms[0] / loss_scale
            self._grad_stats["grad_norm_student"] += role_norms[1] / loss_scale
            self._grad_stats["probes"] += 1
        elif self.cfg.train.memory_mode == "joint":
            losses = joint_backward(self.train_module, x, y, epoch_progress, p.autocast, p.backward)
        else:
            losses = sequential_backward(
                self.train_module, x, y, epoch_progress, p.autocast, p.backward, first_half=self._no_sync
            )
        losses = {name: value.detach().float() for name, value in losses.items()}
        self.guard.observe(losses, where)
        if self.guard.policy == "skip":
            bad = self.guard.skipped_step()
            if bad is not None:
                self.log(f"warning: non-finite loss at {bad}; step skipped (train.on_nonfinite=skip)")
                self.optimizer.zero_grad(set_to_none=True)
                return None
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
        """Test accuracy of the student, D, their EMA and the static teacher (once: it is frozen),
        and with a validation split the same models' validation accuracy (keys ``val_*``).

        Every process evaluates its own share of the data with rank 0's BatchNorm
        statistics; the counts are summed, so the accuracy is exact for any process count."""
        self.distiller.eval()
        broadcast_buffers(self.distiller, self.ctx)
        models: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"student": self.distiller.student_logits}
        if self.distiller.has_dynamic_teacher:
            models["dynamic"] = self.distiller.dynamic_logits
        if self.ema is not None:
            broadcast_buffers(self.ema, self.ctx)
            models["ema_student"] = student_forward(self.ema.module)
            if isinstance(self.ema.module, DynamicPair):
                models["ema_dynamic"] = self.ema.module.forward_dynamic
        result: dict[str, float] = {}
        if self.val_loader is not None:
            result.update({f"val_{k}": v for k, v in self._accuracy(models, self.val_loader).items()})
        if self.distiller.static_teacher is not None and self.static_teacher_acc is None:
            models["static_teacher"] = self.distiller.static_teacher
        result.update(self._accuracy(models, self.test_loader))
        self.static_teacher_acc = result.pop("static_teacher", self.static_teacher_acc)
        return result

    def _accuracy(
        self, models: dict[str, Callable[[torch.Tensor], torch.Tensor]], loader: DataLoader
    ) -> dict[str, float]:
        batches = islice(loader, DRY_RUN_STEPS) if self.dry_run else loader
        correct, total = correct_counts(
            models, batches, self.device, self.cfg.train.channels_last, autocast=self.precision.autocast
        )
        names = list(correct)
        counts = all_reduce_sum(torch.stack([correct[n] for n in names] + [total]), self.ctx).tolist()
        return {name: 100.0 * c / max(counts[-1], 1) for name, c in zip(names, counts)}

    # -- the run -----------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message, file=sys.stdout)

    def describe(self) -> None:
        for line in describe_run(self):
            self.log(line)

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
        exported = self.export()
        total = time.perf_counter() - run_started
        choice = self.selection.choice
        assert choice is not None
        self.log(
            f"done in {total:.1f} s: exported the {exported} weights of epoch {choice.epoch} to "
            f"{self.layout.student} (student test accuracy {choice.test_acc:.2f}%"
            + (f", validation {choice.val_acc:.2f}%" if choice.val_acc is not None else "")
            + f"; {self.selection.rule})"
        )
        return {**row, "total_seconds": total, "exported": exported, "exported_epoch": choice.epoch}

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
            "dynamic_acc": acc.get("dynamic", ""),
            "gap": acc["dynamic"] - acc["student"] if "dynamic" in acc else "",
            "static_teacher_acc": self.static_teacher_acc if self.static_teacher_acc is not None else "",
        }
        if self.ema is not None:
            row["ema_student_acc"] = acc["ema_student"]
            row["ema_dynamic_acc"] = acc.get("ema_dynamic", "")
        if self.val_loader is not None:  # validation columns apart from the test columns above
            for name in ("student", "dynamic", "ema_student", "ema_dynamic"):
                if self.ema is not None or not name.startswith("ema"):
                    row[f"val_{name}_acc"] = acc.get(f"val_{name}", "")
        if self.cfg.train.on_nonfinite == "skip":
            row["skipped_steps"] = train["skipped_steps"]
        row.update({k: train[k] for k in _GRAD_STATS if k in train})
        row["img_per_s"] = train["img_per_s"]
        self.selection.update(epoch, acc, self._student_of)
        row["seconds"] = time.perf_counter() - epoch_started
        self.rows.append(row)
        if self.ctx.is_main:  # the row first: the checkpoint also holds it, so a crash leaves no gap
            self.metrics.write(row)
        self.save_checkpoint(epoch)
        self.log(self._summary(epoch, row, acc, train["img_per_s"]))
        return row

    def _summary(self, epoch: int, row: dict[str, Any], acc: dict[str, float], img_per_s: float) -> str:
        line = f"epoch {epoch}/{self.cfg.train.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  student {acc['student']:.2f}%"
        if "dynamic" in acc:
            line += f"  dynamic teacher {acc['dynamic']:.2f}%  gap {row['gap']:+.2f}"
        if self.ema is not None:
            line += f"  EMA student {acc['ema_student']:.2f}%"
        if "val_student" in acc:
            line += f"  (validation: student {acc['val_student']:.2f}%)"
        if self.static_teacher_acc is not None:
            line += f"  static teacher {self.static_teacher_acc:.2f}%"
        return line + f"  {img_per_s:.0f} img/s  {row['seconds']:.1f} s"

    def _tensorboard(self) -> Any:
        if not self.ctx.is_main or self.dry_run:
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported here: it is slow to import

        return SummaryWriter(str(self.layout.tensorboard), purge_step=self.start_epoch)

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
            "selection": self.selection.state_dict(),
            "metrics": self.rows,
            "static_teacher_acc": self.static_teacher_acc,
            "static_teacher_fingerprint": self.static_teacher_fingerprint,
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
        }
        checkpoint_io.save_checkpoint(state, self.layout.checkpoint)

    def _student_of(self, weights: str) -> nn.Module:
        """A standalone student of the final ("final") or the EMA ("ema") weights, on the CPU."""
        core = self.ema.module if weights == "ema" else self.core  # type: ignore[union-attr]
        return export_student_of(core).to(memory_format=torch.contiguous_format).cpu()

    def export(self) -> str:
        """Write student.pt from the weights the selection chose; returns which ("final" or "EMA")."""
        choice = self.selection.choice
        assert choice is not None, "export() runs after at least one epoch"
        which = "EMA" if choice.weights == "ema" else "final"
        if not self.ctx.is_main:
            return which
        metadata = {
            "data": self.data.name,
            "input_size": list(self.data.input_size),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "class_names": list(self.data.class_names),
            "student_acc": choice.test_acc,
            "val_acc": choice.val_acc,
            "epoch": choice.epoch,
            "selected_on": "validation" if choice.val_acc is not None else "nothing (last epoch)",
            "gpd_ratio": self.cfg.gpd.ratio if self.cfg.gpd.enabled else None,
            "weights": choice.weights,
        }
        student = self.selection.student(self._student_of)
        save_student(student_payload(student, **metadata), self.layout.student)
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
        trainer.load_state(trainer.layout.checkpoint)
    return trainer.fit()
