"""The lines a run prints before its first step: what is trained, on what, and how."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gpd.branches import count_branch_blocks
from gpd.data.bundle import DataBundle, num_samples
from gpd.distill import DynamicPair

if TYPE_CHECKING:
    from gpd.training.trainer import Trainer


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_run(trainer: Trainer) -> list[str]:
    """Run directory, data, models (with the expansion's verification), engine."""
    data = trainer.data
    lines = [f"run directory: {trainer.run_dir}"]
    sizes = f"{num_samples(data.train)} train / " + (
        f"{num_samples(data.val)} validation / " if data.val is not None else ""
    )
    lines.append(
        f"data: {data.name}, {sizes}{num_samples(data.test)} test {_samples(data)}, {data.num_classes} classes"
    )
    lines.append(_models_line(trainer))
    lines.append(_engine_line(trainer))
    lines.append(f"export: {trainer.run.selection.rule}")
    return lines


def _samples(data: DataBundle) -> str:
    """'images of 1x28x28', or 'texts of up to 128 tokens'."""
    if data.task == "text":
        return f"texts of up to {data.input_size[0]} tokens"
    return f"images of {'x'.join(map(str, data.input_size))}"


def _models_line(trainer: Trainer) -> str:
    cfg, d = trainer.cfg, trainer.distiller
    line = f"student: {cfg.model.student}, {trainer.student_params / 1e6:.3f}M parameters"
    pair = d.network
    if isinstance(pair, DynamicPair):
        r = pair.report
        line += (
            f"; dynamic teacher at ratio {r.ratio:g}: {count_parameters(pair.dynamic) / 1e6:.3f}M parameters, "
            f"verified equal to the student (relative error {r.dynamic_error:.1e})"
        )
        if r.noise_std:
            line += (
                f", then symmetry-breaking noise of relative size {r.noise_std:g} added to its copies "
                f"(D now differs from the student by {r.noise_error:.1e}; gpd.noise_std)"
            )
        if not d.shares_parameters:
            line += ", separate parameters (gpd.share=false)"
        elif cfg.gpd.step_rule == "plain":
            line += ", plain networks' steps (gpd.step_rule=plain)"
        else:
            line += ", the paper's per-layer steps"
    else:
        line += "; trained alone (gpd.enabled=false)"
    if d.static_teacher is not None:
        line += (
            f"; static teacher {cfg.teacher.model or cfg.teacher.checkpoint} "
            f"({count_parameters(d.static_teacher) / 1e6:.3f}M parameters, frozen), KD method {cfg.kd.method}"
        )
    if cfg.gpd.branches != "none":
        line += f"; {count_branch_blocks(d.student)} convolutions trained as six-branch blocks ({cfg.gpd.branches})"
    return line


def _engine_line(trainer: Trainer) -> str:
    t, ctx = trainer.cfg.train, trainer.ctx
    line = f"device: {trainer.device}, {torch.get_num_threads()} threads"
    if trainer.threads_reason:
        line += f" ({trainer.threads_reason})"
    if trainer.host_memory_reason:
        line += f", freed host memory {trainer.host_memory_reason}"
    line += f", precision {t.precision}, memory mode {t.memory_mode}"
    if ctx.enabled:
        line += f", {ctx.world_size} processes ({t.batch_size // ctx.world_size} images each per step)"
        line += f", DDP find_unused_parameters={trainer.find_unused_parameters}"
        if trainer.synced_batchnorms:
            line += f", {trainer.synced_batchnorms} synchronised BatchNorms"
    if trainer.run.ema is not None:
        line += f", EMA decay {trainer.ema_decay:.6g} per step" + (" with warm-up" if t.ema_warmup else "")
    if t.compile:
        line += ", torch.compile"
    return line
