"""Accuracy: of the models a run trains (each epoch), and of an exported student (``gpd eval``).

Every model is evaluated in a single pass over the data; the counts are tensors, so
that processes can sum them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from gpd.config import Config, load_config
from gpd.data import build_datasets
from gpd.data.augment import AugmentRecipe
from gpd.data.bundle import num_samples
from gpd.distill import Distiller
from gpd.distill.pair import DynamicPair
from gpd.distill.tasks import ClassificationTask, Metric, Task, make_task
from gpd.distill.tasks.metrics import merge_states
from gpd.inputs import Inputs, ModelInput, call_model, to_device
from gpd.io.layout import RunLayout, student_file_of
from gpd.io.student import read_student_file, student_from_payload
from gpd.outputs import logits_of
from gpd.training.distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_buffers,
    gather_objects,
    resolve_device,
)
from gpd.training.hf_data import prepare as prepare_hf_data

Model = Callable[..., Any]  # a forward pass: its output's logits are read by gpd.outputs.logits_of


def student_forward(network: nn.Module) -> Model:
    """The student's forward pass of a trained network (a DynamicPair: GPDModel or UnsharedPair; or the plain student)."""
    return network.forward_student if isinstance(network, DynamicPair) else network


def models_of_run(distiller: Distiller, ema: ModelEmaV3 | None, ctx: DistContext) -> dict[str, Model]:
    """The models a run evaluates after each epoch, in eval mode: the student, D, and their EMA.

    Every process evaluates its own share of the data with rank 0's BatchNorm statistics
    (broadcast here), so the summed counts are exact for any process count."""
    distiller.eval()
    broadcast_buffers(distiller, ctx)
    models: dict[str, Model] = {"student": _forward_of(distiller.student_logits)}
    if distiller.has_dynamic_teacher:
        models["dynamic"] = _forward_of(distiller.dynamic_logits)
    if ema is not None:
        broadcast_buffers(ema, ctx)
        models["ema_student"] = student_forward(ema.module)
        if isinstance(ema.module, DynamicPair):
            models["ema_dynamic"] = ema.module.forward_dynamic
    return models


def _forward_of(logits: Callable[[Inputs], torch.Tensor]) -> Model:
    """A function of one whole input (the Distiller's ``student_logits``) as a forward pass, which
    :func:`~gpd.inputs.call_model` calls with the input's arguments (a mapping's as keywords)."""

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        return logits(args[0] if len(args) == 1 and not kwargs else ModelInput(args, kwargs))

    return forward


def split_accuracy(
    models: dict[str, Model],
    batches: Iterable[tuple[Any, torch.Tensor]],
    ctx: DistContext,
    device: torch.device,
    channels_last: bool,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> dict[str, float]:
    """Top-1 accuracy in percent of each model over every process's share of a split."""
    correct, total = correct_counts(models, batches, device, channels_last, autocast=autocast)
    names = list(correct)
    counts = all_reduce_sum(torch.stack([correct[n] for n in names] + [total]), ctx).tolist()
    return {name: 100.0 * c / max(counts[-1], 1) for name, c in zip(names, counts)}


@torch.no_grad()
def correct_counts(
    models: dict[str, Model],
    batches: Iterable[tuple[Any, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Correct top-1 predictions of each named model, and the number of samples (as tensors,
    so that processes can sum them); the data are read once for all models. An input is a
    tensor or a mapping of keyword arguments (:mod:`gpd.inputs`); an output, anything
    :func:`~gpd.outputs.logits_of` reads (a tensor, a transformers ``ModelOutput``, ...)."""
    correct = {name: torch.zeros((), dtype=torch.long, device=device) for name in models}
    total = torch.zeros((), dtype=torch.long, device=device)
    for x, y in _on_device(batches, device, channels_last):
        with autocast():
            for name, model in models.items():
                correct[name] += (logits_of(call_model(model, x)).argmax(dim=-1) == y).sum()
        total += y.numel()
    return correct, total


def _on_device(
    batches: Iterable[tuple[Any, torch.Tensor]], device: torch.device, channels_last: bool
) -> Iterator[tuple[Any, torch.Tensor]]:
    """Each batch on ``device``; 4-D float images channels-last where asked."""
    for x, y in batches:
        x, y = to_device(x, device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


@torch.no_grad()
def split_metrics(
    models: dict[str, Model],
    batches: Iterable[tuple[Any, torch.Tensor]],
    task: Task,
    device: torch.device,
    channels_last: bool = False,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """The task's metrics (:meth:`gpd.Task.metric`) of each model, in percent, in one pass over the data:
    ``name`` holds the first metric (the headline one, which selection and the ``*_acc`` columns use:
    mIoU for segmentation), ``name:metric`` every metric. Under torchrun (``ctx``) each process
    passes its own share of the split, and the metrics' counts are summed over the processes first
    (:func:`merge_metrics`)."""
    metrics = {name: task.metric() for name in models}
    for x, y in _on_device(batches, device, channels_last):
        with autocast():
            for name, model in models.items():
                metrics[name].update(task.logits(call_model(model, x)).float(), y)
    merge_metrics(metrics, ctx or DistContext())
    result: dict[str, float] = {}
    for name, metric in metrics.items():
        values = {k: 100.0 * v for k, v in metric.compute().items()}
        result[name] = next(iter(values.values()), float("nan"))
        result.update({f"{name}:{k}": v for k, v in values.items()})
    return result


def merge_metrics(metrics: dict[str, Metric], ctx: DistContext) -> None:
    """Give every process's metric objects the counts of all processes (:attr:`Metric.summed`,
    added up by :func:`~gpd.distill.tasks.metrics.merge_states`); nothing alone. A metric that
    declares nothing to sum keeps its own share, with a warning (rank 0, once per metric class)."""
    if not ctx.enabled:
        return
    states = gather_objects({name: _on_host(metric.state()) for name, metric in metrics.items()}, ctx)
    for name, metric in metrics.items():
        shares = [state[name] for state in states]
        if shares[0] is not None:
            metric.load_state(merge_states(shares))
        elif ctx.is_main and metric.compute():
            warnings.warn(
                f"{type(metric).__name__} declares no counts to sum over processes (Metric.summed, or "
                "state()/load_state()): under torchrun its metrics cover rank 0's share of the data only",
                UserWarning,
                stacklevel=2,
            )


def _on_host(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """A metric's state with its tensors on the CPU, to be sent to the other processes."""
    if state is None:
        return None
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def accuracy(
    models: dict[str, Model],
    batches: Iterable[tuple[Any, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 accuracy in percent of each named model."""
    correct, total = correct_counts(models, batches, device, channels_last)
    return {name: 100.0 * float(c) / max(int(total), 1) for name, c in correct.items()}


def evaluate_exported(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``student.pt`` (or a run directory's, or a ``gpd export --format hf`` directory)
    on the test split of its data set.

    A run directory's config.yaml (an export directory's gpd_config.yaml) supplies the data
    settings; a bare student.pt supplies the data set name it was trained on. ``overrides``
    (key=value) can change e.g. data.root or train.device.
    """
    from gpd.io.hf_export import is_export_directory

    path = Path(path)
    if is_export_directory(path):
        model, cfg, name, where = _export_directory(path, list(overrides or []))
    else:
        student_file = student_file_of(path)
        payload = read_student_file(student_file)
        if path.is_dir() and RunLayout(path).config.is_file():
            cfg = load_config(str(RunLayout(path).config), overrides)
        else:
            meta = payload.get("metadata", {})
            defaults = [f"data.name={meta['data']}"] if meta.get("data") else []
            size = meta.get("input_size")
            if size and len(size) == 3:
                defaults.append(f"data.image_size={size[-1]}")
            cfg = load_config(None, defaults + list(overrides or []))
        model, name, where = student_from_payload(payload, student_file), payload["spec"].get("name"), student_file
    device = resolve_device(cfg.train.device)
    model.to(device)
    recipe = AugmentRecipe.from_config(cfg.data)  # its interpolation resizes the test images as in training
    hf = prepare_hf_data(cfg)
    bundle = build_datasets(
        cfg.data.name, root=cfg.data.root, image_size=cfg.data.image_size or hf.image_size, augment=False,
        recipe=recipe, image_key=cfg.data.image_key, label_key=cfg.data.label_key, text=hf.text,
        test_subset=cfg.data.test_subset if bundle_generates(cfg.data.name) else None,
        canvas_size=cfg.data.canvas_size,
    )  # fmt: skip
    data = hf.apply(bundle)
    loader = DataLoader(data.test, batch_size=cfg.train.eval_batch_size, collate_fn=data.collate)
    task = make_task(cfg.task, cfg.task_options, cfg.train.label_smoothing)
    metrics: dict[str, float] = {}
    with torch.inference_mode():
        if isinstance(task, ClassificationTask):
            acc = accuracy({"student": model}, loader, device)["student"]
        else:
            model.eval()
            found = split_metrics({"student": model}, loader, task, device)
            acc = found.pop("student")
            metrics = {k.split(":", 1)[1]: v for k, v in found.items()}
    return {
        "path": str(where),
        "model": name,
        "data": data.name,
        "images": num_samples(data.test),
        "unit": "texts" if data.task == "text" else "images",
        "accuracy": acc,
        "task": cfg.task,
        "metrics": metrics,  # a non-classification task's metrics in percent (segmentation: miou, pixel_acc)
    }


def bundle_generates(name: str) -> bool:
    """Whether the set generates its samples (fashion_mnist_seg: data.test_subset is its test size)."""
    return name.lower().replace("-", "_") == "fashion_mnist_seg"


def _export_directory(folder: Path, overrides: list[str]) -> tuple[nn.Module, Config, str, Path]:
    """The model of a save_pretrained directory and the config of its data: the data section of
    its gpd_config.yaml (the run's), under the user's overrides; its own tokenizer or image processor."""
    from gpd.io.hf_export import RUN_CONFIG, load_export

    model, _ = load_export(folder)
    name = f"hf:{folder.resolve()}"
    cfg = load_config(None, [f"model.student={name}", *overrides])
    run_config = folder / RUN_CONFIG
    if run_config.is_file():  # read as plain YAML: the run's model and teacher paths need not exist any more
        data = (yaml.safe_load(run_config.read_text()) or {}).get("data") or {}
        given = {item.split("=", 1)[0].removeprefix("data.") for item in overrides if item.startswith("data.")}
        for key, value in data.items():
            if hasattr(cfg.data, key) and key not in given and key != "tokenizer":  # the folder's own tokenizer
                setattr(cfg.data, key, value)
    return model, cfg, name, folder
