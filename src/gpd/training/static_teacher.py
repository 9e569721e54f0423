"""Build the frozen static teacher of a run, and check it fits the data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from gpd.config import Config
from gpd.data import DataBundle
from gpd.distill.tasks import ClassificationTask, Task, make_task
from gpd.errors import CheckpointError, ConfigError, first_line
from gpd.inputs import call_model
from gpd.io.student import is_student_payload, load_weights, read_checkpoint, student_from_payload
from gpd.outputs import logits_of
from gpd.training.model_setup import create_for_data
from gpd.training.pretrained import load_pretrained_file


def build_static_teacher(cfg: Config, data: DataBundle, allow_missing_checkpoint: bool = False) -> nn.Module | None:
    """The static teacher described by ``cfg.teacher``, or None when the run has none.

    A gpd student.pt (or a run directory) rebuilds its own architecture; any other
    checkpoint needs ``teacher.model``. The teacher must accept the data's images and
    predict its number of classes. ``allow_missing_checkpoint`` (a dry run): a missing
    checkpoint file and ``teacher.pretrained`` weights are replaced by random weights.
    """
    t = cfg.teacher
    if t.model is None and t.checkpoint is None:
        return None
    if allow_missing_checkpoint and t.checkpoint is not None and not Path(t.checkpoint).exists():
        if t.model is None:
            raise ConfigError(f"teacher.checkpoint {t.checkpoint} does not exist yet; set teacher.model for a dry run")
        print(f"dry run: teacher.checkpoint {t.checkpoint} does not exist yet -> a random {t.model} stands in")
        teacher = create_for_data(
            t.model, data, t.kwargs, role="teacher", trust_remote_code=cfg.model.trust_remote_code
        )
        check_fits(teacher, data, "teacher", task_of(cfg))
        return teacher
    if t.checkpoint is not None and t.model is None:
        path, payload = read_checkpoint(t.checkpoint, "teacher.checkpoint")  # missing or unreadable: one line
        if not is_student_payload(payload):
            raise ConfigError(
                f"teacher.checkpoint {path} is not a gpd student file or run directory; "
                "also give teacher.model, the architecture its state_dict belongs to"
            )
        teacher = student_from_payload(payload, path)
    else:
        assert t.model is not None  # a checkpoint without a model took the branch above
        teacher = create_for_data(
            t.model,
            data,
            t.kwargs,
            pretrained=t.pretrained,
            role="teacher",
            dry_run=allow_missing_checkpoint,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        if t.checkpoint is not None:
            load_weights(teacher, t.checkpoint, what="teacher")
        elif t.pretrained_file is not None:
            if allow_missing_checkpoint and not Path(t.pretrained_file).exists():
                print(f"dry run: teacher.pretrained_file {t.pretrained_file} does not exist -> random weights stand in")
            else:
                print(load_pretrained_file(teacher, t.pretrained_file, "teacher.pretrained_file"))
    check_fits(teacher, data, "teacher", task_of(cfg))
    return teacher


@torch.no_grad()
def task_of(cfg: Config) -> Task:
    """The run's task (``task``, ``task_options``), to check the models' outputs against."""
    return make_task(cfg.task, cfg.task_options, cfg.train.label_smoothing)


def check_fits(model: nn.Module, data: DataBundle, role: str, task: Task | None = None) -> None:
    """Run one example through ``model``; refuse another input size or class count, and logits of
    a shape the task refuses (a classifier's for segmentation, a dense map's for classification)."""
    was_training = model.training
    model.eval()
    try:
        example = data.example if data.example is not None else torch.zeros(2, *data.input_size)
        output = call_model(model, example)
    except Exception as err:
        samples = "texts" if data.task == "text" else f"images of size {'x'.join(map(str, data.input_size))}"
        raise CheckpointError(f"the {role} does not run on {data.name} {samples}: {first_line(err)}") from None
    finally:
        model.train(was_training)
    if task is not None and not isinstance(task, ClassificationTask):
        logits = task.logits(output)  # a shape the task refuses: its one-line ArgumentError
        if logits.ndim > 2 and data.targets == "mask" and logits.shape[1] != data.num_classes:
            raise ConfigError(
                f"the {role} predicts {logits.shape[1]} classes but {data.name} has {data.num_classes}; "
                f"give a {role} made for this data set"
            )
        return
    if task is not None:
        task.check_logits(logits_of(output))
    logits = logits_of(output)
    if logits.ndim != 2 or logits.shape[-1] != data.num_classes:
        raise ConfigError(
            f"the {role} predicts {logits.shape[-1]} classes but {data.name} has {data.num_classes}; "
            f"give a {role} trained on this data set"
        )


def fingerprint(module: nn.Module) -> str:
    """A SHA-256 of a module's state (names, dtypes, shapes and values): a resumed run checks
    that its static teacher is still the one it started with."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()
