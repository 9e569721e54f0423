"""The training loop of ``gpd train``: data, models, optimisation, metrics, export.

The loop knows nothing about GPD: the :class:`~gpd.distill.Distiller` returns a dict
of loss terms and the loop sums them, as in torchvision's reference scripts with
mdistiller's distiller contract.
"""

from __future__ import annotations

import random
import sys
import time
from collections import defaultdict
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader
from tqdm import tqdm

from gpd.branches import count_branch_blocks
from gpd.config import Config
from gpd.data import DataBundle, build_datasets, synthetic_bundle
from gpd.data.synthetic import SHAPES
from gpd.distill import Distiller
from gpd.errors import ConfigError, DataError, GPDError
from gpd.export import load_weights, student_payload
from gpd.models import create_model
from gpd.training.evaluate import accuracy
from gpd.training.static_teacher import build_static_teacher, check_fits
from gpd.training.run_dir import CHECKPOINT_FILE, METRICS_FILE, STUDENT_FILE, MetricsCSV, atomic_torch_save

CHECKPOINT_FORMAT = "gpd-checkpoint/1"
DRY_RUN_STEPS = 2
DRY_RUN_IMAGE_SIZE = 32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available; use train.device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def log(message: str) -> None:
    tqdm.write(message, file=sys.stdout)


class Trainer:
    """Builds a run from its config and trains it, writing into ``run_dir``."""

    def __init__(self, cfg: Config, run_dir: Path, dry_run: bool = False) -> None:
        """``dry_run``: a quick check of the whole configuration (DRY_RUN_STEPS steps, small
        images, a synthetic data set and random weights standing in for missing files)."""
        self.cfg = cfg
        self.run_dir = run_dir
        self.dry_run = dry_run
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        self.data = self._build_data()
        student = create_model(
            cfg.model.student, num_classes=self.data.num_classes, in_chans=self.data.in_chans, **cfg.model.kwargs
        )
        if cfg.student.checkpoint is not None:  # fine-tuning: D starts equal to this student (IR)
            if self._present(cfg.student.checkpoint, "student.checkpoint"):
                load_weights(student, cfg.student.checkpoint, what="student")
        check_fits(student, self.data, "student")
        static_teacher = build_static_teacher(cfg, self.data, allow_missing_checkpoint=dry_run)
        kd_options = {
            "kd": {"temperature": cfg.kd.temperature, "weight": cfg.kd.weight},
            "dkd": {
                "alpha": cfg.dkd.alpha,
                "beta": cfg.dkd.beta,
                "temperature": cfg.dkd.temperature,
                "warmup_epochs": cfg.dkd.warmup_epochs,
            },
            "reviewkd": {"weight": cfg.reviewkd.weight, "mid_channels": cfg.reviewkd.mid_channels},
        }.get(cfg.kd.method)
        self.distiller = Distiller(
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
        ).to(self.device)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.distiller.to(memory_format=self.memory_format)
        self.student_params = count_parameters(student)

        generator = torch.Generator().manual_seed(cfg.train.seed)
        if len(self.data.train) < cfg.train.batch_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} is larger than the {len(self.data.train)} training samples"
            )
        loader_args: dict[str, Any] = dict(num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        self.train_loader = DataLoader(
            self.data.train, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True, generator=generator, **loader_args
        )
        self.test_loader = DataLoader(self.data.test, batch_size=cfg.train.eval_batch_size, **loader_args)

        t = cfg.train
        self.optimizer = create_optimizer_v2(
            self.distiller, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum
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
        self.num_updates = 0
        self.static_teacher_acc: float | None = None
        self.metrics = MetricsCSV(run_dir / METRICS_FILE)

    def _build_data(self) -> DataBundle:
        d = self.cfg.data
        if not self.dry_run:
            return build_datasets(
                d.name, root=d.root, train_subset=d.train_subset, augment=d.augment,
                image_size=d.image_size, download=d.download, seed=self.cfg.train.seed,
            )  # fmt: skip
        size = min(d.image_size or SHAPES.get(d.name, (0, 32))[1], DRY_RUN_IMAGE_SIZE)
        try:
            return build_datasets(d.name, root=d.root, train_subset=4 * self.cfg.train.batch_size, image_size=size)
        except DataError as err:
            log(f"dry run: {err} -> using a SYNTHETIC stand-in of random images")
            return synthetic_bundle(d.name, image_size=size, samples=4 * self.cfg.train.batch_size)

    def _present(self, path: str, key: str) -> bool:
        """Whether a checkpoint file exists; a dry run goes on without it (random weights)."""
        if self.dry_run and not Path(path).exists():
            log(f"dry run: {key} {path} does not exist yet -> random weights stand in")
            return False
        return True

    # -- one epoch ---------------------------------------------------------------------

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.distiller.train()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        seen = 0
        started = time.perf_counter()
        bar = tqdm(
            total=len(self.train_loader) * self.cfg.train.batch_size,
            desc=f"epoch {epoch}/{self.cfg.train.epochs}",
            unit="img",
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
            disable=None,
        )
        for step, (x, y) in enumerate(self.train_loader):
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            losses = self.distiller(x, y, epoch=epoch - 1 + step / len(self.train_loader))
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                terms = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                raise GPDError(
                    f"the loss became non-finite at epoch {epoch}, step {step} ({terms}); lower train.lr or "
                    "set train.grad_clip; the last good checkpoint is kept"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.distiller.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
            self.num_updates += 1
            self.scheduler.step_update(num_updates=self.num_updates)
            for name, value in losses.items():
                sums[name] += value.detach() * y.numel()
            sums["loss"] += loss.detach() * y.numel()
            seen += y.numel()
            bar.update(y.numel())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if self.dry_run and step + 1 >= DRY_RUN_STEPS:
                break
        bar.close()
        seconds = time.perf_counter() - started
        result = {name: float(total) / seen for name, total in sums.items()}
        result["train_seconds"] = seconds
        result["img_per_s"] = seen / seconds
        return result

    def evaluate(self) -> dict[str, float]:
        self.distiller.eval()
        models = {"student": self.distiller.student_logits}
        if self.distiller.has_dynamic_teacher:
            models["teacher"] = self.distiller.teacher_logits
        if self.distiller.static_teacher is not None and self.static_teacher_acc is None:  # frozen: once
            models["static_teacher"] = self.distiller.static_teacher
        batches = islice(self.test_loader, DRY_RUN_STEPS) if self.dry_run else self.test_loader
        result = accuracy(models, batches, self.device, channels_last=self.cfg.train.channels_last)
        self.static_teacher_acc = result.pop("static_teacher", self.static_teacher_acc)
        return result

    # -- the run -----------------------------------------------------------------------

    def describe(self) -> None:
        d = self.distiller
        log(f"run directory: {self.run_dir}")
        log(
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
        else:
            line += "; trained alone (gpd.enabled=false)"
        if d.static_teacher is not None:
            line += (
                f"; static teacher {self.cfg.teacher.model or self.cfg.teacher.checkpoint} "
                f"({count_parameters(d.static_teacher) / 1e6:.3f}M parameters, frozen), KD method {self.cfg.kd.method}"
            )
        if self.cfg.gpd.branches != "none":
            trained = d.gpd.student.module if d.gpd is not None else d.plain
            line += f"; {count_branch_blocks(trained)} convolutions trained as six-branch blocks ({self.cfg.gpd.branches})"
        log(line)
        log(f"device: {self.device}, {torch.get_num_threads()} threads")

    def fit(self) -> dict[str, Any]:
        self.describe()
        run_started = time.perf_counter()
        row: dict[str, Any] = {}
        for epoch in range(1, (1 if self.dry_run else self.cfg.train.epochs) + 1):
            epoch_started = time.perf_counter()
            train = self.train_one_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]  # as of the epoch's last step
            acc = self.evaluate()
            row = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": train["loss"],
                **{f"loss_{k}": v for k, v in train.items() if k not in ("loss", "train_seconds", "img_per_s")},
                "student_acc": acc["student"],
                "teacher_acc": acc.get("teacher", ""),
                "gap": acc["teacher"] - acc["student"] if "teacher" in acc else "",
                "static_teacher_acc": self.static_teacher_acc if self.static_teacher_acc is not None else "",
                "img_per_s": train["img_per_s"],
                "seconds": time.perf_counter() - epoch_started,
            }
            self.metrics.write(row)
            self.save_checkpoint(epoch)
            summary = (
                f"epoch {epoch}/{self.cfg.train.epochs}  lr {lr:.4g}  loss {train['loss']:.4f}  "
                f"student {acc['student']:.2f}%"
            )
            if "teacher" in acc:
                summary += f"  teacher {acc['teacher']:.2f}%  gap {row['gap']:+.2f}"
            if self.static_teacher_acc is not None:
                summary += f"  static teacher {self.static_teacher_acc:.2f}%"
            summary += f"  {train['img_per_s']:.0f} img/s  {row['seconds']:.1f} s"
            log(summary)
        self.export(row)
        total = time.perf_counter() - run_started
        log(f"done in {total:.1f} s: student test accuracy {row['student_acc']:.2f}%; exported to {self.run_dir / STUDENT_FILE}")
        return {**row, "total_seconds": total}

    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": OmegaConf.to_container(OmegaConf.structured(self.cfg)),
            "epoch": epoch,
            "num_updates": self.num_updates,
            "model": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        atomic_torch_save(state, self.run_dir / CHECKPOINT_FILE)

    def export(self, final_row: dict[str, Any]) -> None:
        student = self.distiller.export_student().to(memory_format=torch.contiguous_format).cpu()
        metadata = {
            "data": self.data.name,
            "input_size": list(self.data.input_size),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "class_names": list(self.data.class_names),
            "student_acc": final_row.get("student_acc"),
            "gpd_ratio": self.cfg.gpd.ratio if self.cfg.gpd.enabled else None,
        }
        atomic_torch_save(student_payload(student, **metadata), self.run_dir / STUDENT_FILE)


def train(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train the run described by ``cfg`` into ``run_dir`` and return the last epoch's metrics."""
    return Trainer(cfg, run_dir).fit()
