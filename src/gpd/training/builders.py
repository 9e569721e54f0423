"""From a config to the objects a run trains with: data, distiller, wrappers, loaders, optimizer.

Pure builders: each takes the config (and what it needs of the others) and returns new
objects; nothing here trains, writes files or keeps state. The run's
:class:`~gpd.training.policy.RunPolicy` caps what they build: a dry run builds the same
objects from a few small images, with random weights standing in for files that do not
exist yet.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from gpd.config import Config
from gpd.data import DataBundle, build_datasets, synthetic_bundle
from gpd.data.augment import AugmentRecipe
from gpd.data.bundle import num_samples
from gpd.data.labels import check_labels
from gpd.data.synthetic import SHAPES
from gpd.distill import Distiller, DynamicPair
from gpd.errors import ConfigError, DataError
from gpd.io.student import load_weights
from gpd.sharing.steps import is_sgd_like
from gpd.training.describe import count_parameters
from gpd.training.distributed import DistContext, shard
from gpd.training.hf_data import prepare as prepare_hf_data
from gpd.training.model_setup import build_student
from gpd.training.policy import RunPolicy
from gpd.training.pretrained import load_pretrained_file
from gpd.training.static_teacher import build_static_teacher, check_fits, task_of

Log = Callable[[str], None]


class Loaders(NamedTuple):
    train: DataLoader
    sampler: DistributedSampler
    test: DataLoader
    val: DataLoader | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_batch(cfg: Config, ctx: DistContext, policy: RunPolicy) -> int:
    """train.batch_size, within the policy's cap of images per process."""
    return policy.batch(cfg.train.batch_size, ctx.world_size)


def build_data(cfg: Config, ctx: DistContext, policy: RunPolicy, log: Log) -> DataBundle:
    """The train/test (and validation) sets; every label checked once against the classes,
    so that no loss reads labels back from the device per step."""
    bundle = _load_data(cfg, ctx, policy, log)
    if policy.val_fraction is not None and cfg.data.val_split is not None:  # of a small data set's few samples
        bundle.hold_out_validation(policy.val_fraction, cfg.data.val_seed)
    for what, split in (("training", bundle.train), ("test", bundle.test), ("validation", bundle.val)):
        if split is not None and bundle.targets == "label":  # masks: checked by the data set
            check_labels(split, bundle.num_classes, what)
    return bundle


def _load_data(cfg: Config, ctx: DistContext, policy: RunPolicy, log: Log) -> DataBundle:
    d = cfg.data
    recipe = AugmentRecipe.from_config(d)
    hf = prepare_hf_data(cfg)  # an hf: student's tokenizer or image processor
    if policy.data_batches is None:
        return hf.apply(build_datasets(
            d.name, root=d.root, train_subset=d.train_subset, augment=d.augment, image_size=d.image_size or hf.image_size,
            download=d.download, seed=cfg.train.seed, test_subset=d.test_subset, recipe=recipe,
            image_key=d.image_key, label_key=d.label_key, val_split=d.val_split, val_seed=d.val_seed, text=hf.text,
            canvas_size=d.canvas_size,
        ), log)  # fmt: skip
    size = d.image_size or hf.image_size or SHAPES.get(d.name, (0, 32))[1]
    size = size if policy.max_image_size is None else min(size, policy.max_image_size)
    samples = policy.data_batches * global_batch(cfg, ctx, policy)
    try:
        return hf.apply(build_datasets(
            d.name, root=d.root, train_subset=samples, image_size=size, test_subset=samples, recipe=recipe,
            image_key=d.image_key, label_key=d.label_key, text=hf.text, canvas_size=d.canvas_size,
        ), log)  # fmt: skip
    except DataError as err:
        if not policy.stand_ins or hf.task == "text":  # random images stand in for images, never for text
            raise
        log(f"{policy.name}: {err} -> using a SYNTHETIC stand-in of random images")
        return synthetic_bundle(d.name, image_size=size, samples=samples, recipe=recipe)


def _present(path: str, key: str, dry_run: bool, log: Log) -> bool:
    """Whether a checkpoint file exists; a dry run goes on without it (random weights)."""
    if dry_run and not Path(path).exists():
        log(f"dry run: {key} {path} does not exist yet -> random weights stand in")
        return False
    return True


def build_distiller(cfg: Config, data: DataBundle, dry_run: bool, log: Log) -> tuple[Distiller, int]:
    """The objective (student, its dynamic teacher, the static teacher, the KD method) and the
    student's parameter count."""
    student = build_student(cfg, data, dry_run=dry_run, log=log)
    if cfg.student.checkpoint is not None:  # fine-tuning: D starts equal to this student (IR)
        if _present(cfg.student.checkpoint, "student.checkpoint", dry_run, log):
            load_weights(student, cfg.student.checkpoint, what="student")
    elif cfg.student.pretrained_file is not None:  # weights from another task, adapted to this data
        if _present(cfg.student.pretrained_file, "student.pretrained_file", dry_run, log):
            log(load_pretrained_file(student, cfg.student.pretrained_file, "student.pretrained_file"))
    _check_task_data(cfg, data)
    check_fits(student, data, "student", task_of(cfg))
    static_teacher = build_static_teacher(cfg, data, allow_missing_checkpoint=dry_run)
    student_params = count_parameters(student)
    example = {"example_input": data.example} if data.example is not None else {"input_size": data.input_size}
    distiller = Distiller.from_config(_checked_targets(cfg, data), student, static_teacher, **example)
    return distiller, student_params


def _check_task_data(cfg: Config, data: DataBundle) -> None:
    """gpd's two tasks need their kind of targets: segmentation masks, classification labels (a user's
    task takes whatever its data set gives)."""
    kinds = {"label": "class labels", "values": "targets of its own (targets='values')"}
    if cfg.task == "segmentation" and data.targets != "mask":
        raise ConfigError(
            f"task=segmentation needs masks; {data.name} has {kinds[data.targets]}: use data.name=fashion_mnist_seg "
            "or segfolder"
        )
    if cfg.task == "classification" and data.targets == "mask":
        raise ConfigError(f"{data.name} has segmentation masks: set task=segmentation")
    if cfg.task == "classification" and data.targets == "values":
        raise ConfigError(
            f"{data.name} has targets of its own (targets='values'), not class labels: set task= to a task of your "
            "own (task=my_task.py:MyTask)"
        )


def _checked_targets(cfg: Config, data: DataBundle) -> Config:
    """``cfg`` with ``task_options.check_targets=false`` where the data set checked its masks and
    the task takes that option (no read of the masks back from the device at each step)."""
    from gpd.distill.tasks import task_class, task_options

    if data.targets != "mask" or "check_targets" not in task_options(task_class(cfg.task)):
        return cfg
    return dataclasses.replace(cfg, task_options={"check_targets": False, **cfg.task_options})


def canonical_strides(module: nn.Module) -> None:
    """Give parameters whose layout is contiguous anyway (1x1 kernels, one input channel)
    standard strides: ``.to(channels_last)`` leaves odd strides on their size-1 dimensions,
    which the gradients do not follow, and DDP warns about (and copies) every such one."""
    with torch.no_grad():
        for param in module.parameters():
            if param.is_contiguous() and param.stride() != torch.empty(param.shape, device="meta").stride():
                param.data = param.data.clone(memory_format=torch.contiguous_format)


def find_unused_parameters(distiller: Distiller, cfg: Config, ctx: DistContext) -> bool:
    """Whether DDP must look for parameters a backward does not reach: layers the expansion
    found never run, and in the sequential mode D's own tensors (unshared, or D's ReviewKD
    heads), which the student's half, the one that synchronises, does not use."""
    pair = distiller.network
    if not ctx.enabled or not isinstance(pair, DynamicPair):
        return False
    never_run = any(
        any(True for _ in pair.dynamic.get_submodule(name).parameters()) for name in pair.report.roles.unused
    )
    sequential = cfg.train.memory_mode == "sequential"
    method_params = any(True for _ in distiller.kd_method.parameters())  # e.g. ReviewKD: D's head
    return never_run or (sequential and (not distiller.shares_parameters or method_params))


def wrap_for_training(
    distiller: Distiller, cfg: Config, ctx: DistContext, device: torch.device, find_unused: bool
) -> nn.Module:
    """DistributedDataParallel and torch.compile around the distiller, as configured.

    The frozen static teacher is left out of DDP (no broadcast of its weights and
    BatchNorm buffers); both memory modes use DDP's own gradient hooks, so gradients
    are all-reduced bucket by bucket while the backward runs."""
    module: nn.Module = distiller
    if ctx.enabled:
        teacher = distiller.static_teacher
        if teacher is not None:
            names = [f"static_teacher.{n}" for n, _ in (*teacher.named_parameters(), *teacher.named_buffers())]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(distiller, names)
        module = DistributedDataParallel(
            distiller,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            find_unused_parameters=find_unused,
        )
    if cfg.train.compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module


def build_loaders(cfg: Config, data: DataBundle, ctx: DistContext, device: torch.device, policy: RunPolicy) -> Loaders:
    """Each epoch's order is a permutation seeded by (seed, epoch), split across processes,
    so a resumed run and a run on N processes see the same samples at each global step."""
    t, world = cfg.train, ctx.world_size
    if t.batch_size % world:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is the global batch and must divide evenly over {world} processes"
        )
    batch = global_batch(cfg, ctx, policy)
    if num_samples(data.train) < batch:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is larger than the {num_samples(data.train)} training samples"
        )
    sampler: DistributedSampler = DistributedSampler(
        data.train, num_replicas=world, rank=ctx.rank, shuffle=True, seed=t.seed, drop_last=True
    )
    workers = policy.workers(cfg.data.num_workers)
    args: dict[str, Any] = dict(num_workers=workers, pin_memory=device.type == "cuda")
    if data.collate is not None:  # text: each batch padded to its longest text
        args["collate_fn"] = data.collate
    train = DataLoader(data.train, batch_size=batch // world, sampler=sampler, drop_last=True, **args)
    test = DataLoader(shard(data.test, ctx), batch_size=t.eval_batch_size, **args)
    val = DataLoader(shard(data.val, ctx), batch_size=t.eval_batch_size, **args) if data.val is not None else None
    return Loaders(train, sampler, test, val)


def build_optimization(cfg: Config, distiller: Distiller, steps_per_epoch: int) -> tuple[Any, Any]:
    """timm's optimizer over the distiller's parameter groups, and its scheduler stepped per update."""
    t = cfg.train
    groups = distiller.param_groups(
        t.weight_decay, adaptive=not is_sgd_like(t.optimizer), decay_norms_and_biases=t.decay_norms_and_biases
    )
    optimizer = create_optimizer_v2(groups, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=t.scheduler,
        num_epochs=t.epochs,
        decay_epochs=max(t.epochs // 3, 1),
        decay_milestones=list(t.decay_milestones) or [max(t.epochs // 2, 1)],
        decay_rate=t.decay_rate,
        min_lr=t.min_lr,
        warmup_epochs=t.warmup_epochs,  # type: ignore[arg-type]  # timm annotates int; its schedulers take fractions
        warmup_lr=t.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return optimizer, scheduler
