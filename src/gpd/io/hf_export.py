"""``gpd export RUN --format hf``: the student of an ``hf:`` run as a ``save_pretrained`` directory.

The directory holds what ``AutoModelFor....from_pretrained`` reads: ``config.json`` (the student's
sizes, its class names as ``id2label``) and ``model.safetensors``; the tokenizer or image
processor the run's data were prepared by is copied beside them, and the run's config as
``gpd_config.yaml``, so that ``gpd eval DIR`` reads the same data the same way. The directory is
written under a temporary name and renamed into place; an existing one is replaced only with
``--overwrite``, and only if it is a transformers directory (config.json); an empty folder is filled. After
writing, the directory is loaded back and its logits compared with the student's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpd.errors import ConfigError, first_line
from gpd.inputs import call_model
from gpd.io.layout import RunLayout
from gpd.models import transformers_hub
from gpd.outputs import logits_of

RUN_CONFIG = "gpd_config.yaml"  # the run's config, read by ``gpd eval DIR``
CHECK_TOLERANCE = 1e-4  # relative to the output scale (at least 1)


def is_export_directory(path: str | Path) -> bool:
    """Whether ``path`` is a save_pretrained directory (config.json) without a gpd student.pt."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not RunLayout(path).student.is_file()


def check_target(target: Path, source: Path, overwrite: bool) -> None:
    """Refuse an existing target unless ``overwrite``, and never replace what is not an export."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):  # nothing to lose
        return
    if not overwrite:
        raise ConfigError(f"{target} already exists; choose another folder with --output or pass --overwrite")
    if target.resolve() in (source.resolve(), source.parent.resolve()):
        raise ConfigError(f"{target} holds the input; choose another folder with --output")
    if target.is_file() or not (target / "config.json").is_file():
        raise ConfigError(f"{target} is not a transformers directory; --overwrite replaces only an earlier export")


def _copy_preprocessor(directory: str | None, into: Path) -> str:
    """The tokenizer and/or image processor of ``directory`` saved into ``into``; a note if none."""
    if directory is None:
        return "no tokenizer or image processor was recorded: copy it into the folder yourself"
    source = Path(directory)
    if not source.is_dir():
        return f"the tokenizer / image processor folder {source} is gone: copy it into the folder yourself"
    transformers = transformers_hub.import_transformers("--format hf")
    text, image = transformers_hub.preprocessor_files(source)
    with transformers_hub.quiet(transformers):
        if text:
            transformers.AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(into))
        if image:
            transformers.AutoImageProcessor.from_pretrained(str(source)).save_pretrained(str(into))
    return "" if text or image else f"{source} holds no tokenizer or image processor"


def _example(model: nn.Module, payload: dict[str, Any]) -> Any:
    """A seeded batch the student takes: token ids with a mask, or images of the recorded size."""
    generator = torch.Generator().manual_seed(0)
    meta = payload.get("metadata") or {}
    config: Any = model.config
    if meta.get("task") == "text":
        ids = torch.randint(1, int(config.vocab_size), (2, 8), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    size = meta.get("input_size") or [getattr(config, "num_channels", 3), config.image_size, config.image_size]
    return torch.randn((2, *[int(s) for s in size]), generator=generator)


def _difference(folder: Path, model: nn.Module, payload: dict[str, Any]) -> str:
    """How far the reloaded directory's logits are from the student's, as a note."""
    transformers = transformers_hub.import_transformers("--format hf")
    task = (payload.get("spec") or {}).get(transformers_hub.KIND_KEY, "image")
    auto = getattr(transformers, transformers_hub.AUTO_CLASSES[task])
    with transformers_hub.quiet(transformers):
        reloaded = auto.from_pretrained(str(folder), use_kernels=False).eval()
    example = _example(model, payload)
    with torch.no_grad():
        got, expected = logits_of(call_model(reloaded, example)), logits_of(call_model(model.eval(), example))
    diff, scale = float((got - expected).abs().max()), float(expected.abs().max())
    verdict = "matches" if diff <= CHECK_TOLERANCE * max(scale, 1.0) else "DIFFERS FROM"
    return f"{auto.__name__}.from_pretrained {verdict} the student: max abs diff {diff:.1e}"


def write_hf(payload: dict[str, Any], model: nn.Module, target: Path, source: Path) -> str:
    """Write the student's save_pretrained directory to ``target`` (checked with :func:`check_target`)."""
    name = (payload.get("spec") or {}).get("name", "?")
    if not transformers_hub.is_hf_name(name) or not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"--format hf exports a transformers student (model.student=hf:DIR); this one is {name}: "
            "use --format pt, safetensors or onnx"
        )
    meta = payload.get("metadata") or {}
    names = [str(n) for n in meta.get("class_names") or []]
    config: Any = model.config
    if len(names) == config.num_labels:
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with transformers_hub.quiet(transformers_hub.import_transformers("--format hf")):
            model.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[operator]
        note = _copy_preprocessor(meta.get("preprocessor"), staging)
        run_config = RunLayout(source.parent).config
        if run_config.is_file():
            shutil.copyfile(run_config, staging / RUN_CONFIG)
        check = _difference(staging, model, payload)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staging, target)
    except ConfigError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"cannot write {target}: {type(err).__name__}: {first_line(err)}") from None
    return "; ".join(part for part in (check, note) if part)


def folder_size(folder: Path) -> int:
    """The bytes of the files in ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def load_export(folder: Path) -> tuple[nn.Module, str]:
    """``(model, task)`` of an exported directory, loaded by its Auto class, in eval mode."""
    name = transformers_hub.HF_PREFIX + str(folder)
    transformers = transformers_hub.import_transformers(name)
    config, task, _ = transformers_hub.read_config(name)
    auto = getattr(transformers, transformers_hub.AUTO_CLASSES[task])
    with transformers_hub.quiet(transformers):
        model = auto.from_pretrained(str(folder), config=config, use_kernels=False)
    return model.eval(), task
