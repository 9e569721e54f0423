"""Hugging Face ``transformers`` classifiers by name: ``hf:PATH`` (a ``save_pretrained`` directory) or ``hf:ID``.

The directory's ``config.json`` names the architecture (``architectures``); the Auto class of
its task builds it: ``AutoModelForImageClassification`` or ``AutoModelForSequenceClassification``.
Weights load when the directory has them; ``model.kwargs`` overrides config fields; a classifier
head of another class count is re-initialised, and :func:`load_report` says so in one line, as
``student.pretrained_file`` does. A hub id goes through the same ``from_pretrained`` call (it
needs a network). Code from a directory (``auto_map`` in its config) never runs unless
``trust_remote_code`` is set (``model.trust_remote_code=true``).

A model built here records its whole config in its ``gpd_spec`` (key ``transformers_config``),
so an exported student.pt is rebuilt without the directory it was trained from.
transformers is imported only when an ``hf:`` name is used (``pip install 'gpd[hf]'``).
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from gpd.errors import ModelError, first_line

HF_PREFIX = "hf:"
INSTALL_HINT = "pip install 'gpd[hf]'"
TRUST_KEY = "model.trust_remote_code"
CONFIG_KEY = "transformers_config"  # the spec's copy of the model's config
KIND_KEY = "transformers_task"  # the spec's task: "image" or "text"
AUTO_CLASSES = {"image": "AutoModelForImageClassification", "text": "AutoModelForSequenceClassification"}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model")
IMAGE_FILES = ("preprocessor_config.json",)

_REPORTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def is_hf_name(name: object) -> bool:
    """Whether ``name`` is ``hf:PATH`` or ``hf:ID``."""
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def import_transformers(name: str) -> Any:
    """The transformers package, or a one-line ModelError that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise ModelError(f"{name} needs Hugging Face transformers, which is not installed: {INSTALL_HINT}") from None
    return transformers


@contextlib.contextmanager
def quiet(transformers: Any) -> Iterator[None]:
    """transformers' load reports and progress bars off: gpd reports what it loaded in one line."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def location(name: str) -> str:
    """What follows ``hf:``: a local directory (made absolute when it exists) or a hub id."""
    where = name[len(HF_PREFIX) :]
    path = Path(where).expanduser()
    return str(path.resolve()) if path.exists() else where


def canonical(name: str) -> str:
    """``hf:`` and the absolute directory (what student.pt records), or the hub id as given."""
    return HF_PREFIX + location(name)


def _looks_local(where: str) -> bool:
    return where.startswith((".", "/", "~")) or Path(where).expanduser().exists() or where.count("/") > 1


def check_directory(name: str) -> Path | None:
    """The local directory of ``name`` (None for a hub id); ModelError if it is not a transformers directory."""
    where = location(name)
    if not where:
        raise ModelError(f"{name!r}: give a directory written by save_pretrained (hf:PATH) or a hub id (hf:ORG/NAME)")
    if not _looks_local(where):
        return None
    path = Path(where).expanduser()
    if not path.exists():
        raise ModelError(f"{name}: no such directory; give a folder written by save_pretrained (config.json, weights)")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{name}: {path} is not a transformers directory (no config.json); save the model with save_pretrained"
        )
    return path


def _refuse_remote_code(name: str, directory: Path | None, trust_remote_code: bool) -> None:
    if trust_remote_code or directory is None:
        return
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{name}: cannot read config.json: {first_line(err)}") from None
    if isinstance(raw, dict) and raw.get("auto_map"):
        raise ModelError(
            f"{name}: the model needs code from its directory (auto_map in config.json), which gpd does not run "
            f"unless you set {TRUST_KEY}=true"
        )


def task_of(config: Any, transformers: Any, name: str) -> str:
    """``"image"`` or ``"text"``: from the config's ``architectures``, else from the Auto classes' mappings."""
    for arch in getattr(config, "architectures", None) or []:
        if "ForImageClassification" in arch:
            return "image"
        if arch.endswith("ForSequenceClassification"):
            return "text"
    for task, auto in AUTO_CLASSES.items():
        if type(config) in getattr(transformers, auto)._model_mapping:
            return task
    archs = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
    raise ModelError(f"{name}: {archs} is neither an image nor a sequence classifier (no AutoModelFor... class fits)")


def read_config(name: str, trust_remote_code: bool = False) -> tuple[Any, str, Path | None]:
    """``(config, task, local directory or None)`` of ``hf:PATH`` / ``hf:ID``; one-line ModelErrors."""
    transformers = import_transformers(name)
    directory = check_directory(name)
    _refuse_remote_code(name, directory, trust_remote_code)
    try:
        with quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(location(name), trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ModelError(f"{name}: the model needs its own code; set {TRUST_KEY}=true to run it") from None
        raise ModelError(f"{name}: cannot read its config: {first_line(err)}") from None
    except Exception as err:  # a hub id offline, a corrupt file
        raise ModelError(f"{name}: cannot read its config: {first_line(err)}") from None
    return config, task_of(config, transformers, name), directory


def _apply_overrides(
    config: Any, name: str, kwargs: dict[str, Any], num_classes: int, in_chans: int, task: str
) -> None:
    for key, value in kwargs.items():
        if not hasattr(config, key):
            raise ModelError(f"{name}: model.kwargs {key!r} is not a field of its {type(config).__name__}")
        setattr(config, key, value)
    if config.num_labels != num_classes:
        config.num_labels = num_classes  # a new id2label of num_classes entries
    channels = getattr(config, "num_channels", None)
    if task == "image" and isinstance(channels, int) and channels != in_chans:
        raise ModelError(
            f"{name} reads images of {channels} channel(s) but the data have {in_chans}; "
            "use data of as many channels or a model saved with num_channels to match"
        )


def _has_weights(directory: Path | None) -> bool:
    return directory is None or any((directory / f).is_file() for f in WEIGHT_FILES)


def _report(name: str, model: nn.Module, info: dict[str, Any], num_classes: int) -> str:
    """'hf:DIR: loaded N of M tensors; re-initialised the classifier ...'; ModelError for other mismatches."""
    own = model.state_dict()
    heads: list[str] = []
    others: list[str] = []
    for key, saved, wanted in sorted(info.get("mismatched_keys") or [], key=lambda item: str(item[0])):
        where = heads if len(wanted) and wanted[0] == num_classes else others
        where.append(f"{key} {tuple(saved)} -> {tuple(wanted)}")
    if others:
        raise ModelError(
            f"{name}: the saved weights do not fit the model built from its config and model.kwargs: "
            f"{', '.join(others[:3])}; drop the model.kwargs that change sizes"
        )
    missing = sorted(info.get("missing_keys") or [])
    loaded = len(own) - len(heads) - len(missing)
    line = f"{name}: loaded {loaded} of {len(own)} tensors"
    if heads:
        line += f"; re-initialised the classifier {', '.join(heads)}"
    if missing:
        line += f"; initialised {len(missing)} missing tensor(s) ({', '.join(missing[:3])})"
    return line


def create(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``hf:PATH`` for ``num_classes`` classes (``in_chans``: image channels), weights included.

    ``kwargs``: config fields to override, and ``trust_remote_code``. What was loaded is kept for
    :func:`load_report`; the spec fields are :func:`spec_fields`."""
    kwargs = dict(kwargs)
    trust = bool(kwargs.pop("trust_remote_code", False))
    transformers = import_transformers(name)
    config, task, directory = read_config(name, trust)
    _apply_overrides(config, name, kwargs, num_classes, in_chans, task)
    auto = getattr(transformers, AUTO_CLASSES[task])
    try:
        with quiet(transformers):
            if _has_weights(directory):
                model, info = auto.from_pretrained(
                    location(name), config=config, ignore_mismatched_sizes=True, output_loading_info=True,
                    trust_remote_code=trust, use_kernels=False,  # hub kernels would swap layers' forward passes
                )  # fmt: skip
                report = _report(name, model, info, num_classes)
            else:
                model = auto.from_config(config, trust_remote_code=trust)
                report = f"{name}: no weights in the directory -> randomly initialised from its config"
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{name}: cannot build the model: {type(err).__name__}: {first_line(err)}") from None
    _REPORTS[model] = report
    return model


def load_report(model: nn.Module) -> str | None:
    """The one line :func:`create` made of what it loaded into ``model`` (None for other models)."""
    return _REPORTS.get(model)


def spec_fields(model: nn.Module) -> dict[str, Any]:
    """What ``gpd_spec`` records besides the name: the model's whole config, as JSON values, and its task."""
    transformers = import_transformers("an hf: model")
    config = json.loads(model.config.to_json_string(use_diff=False))  # type: ignore[operator, union-attr]
    return {CONFIG_KEY: config, KIND_KEY: task_of(model.config, transformers, type(model).__name__)}


def from_spec(spec: dict[str, Any]) -> nn.Module:
    """A randomly initialised model of a spec's recorded config (no directory needed)."""
    name = spec["name"]
    transformers = import_transformers(name)
    raw = dict(spec[CONFIG_KEY])
    model_type = raw.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ModelError(f"{name}: transformers {transformers.__version__} does not know the model type {model_type!r}")
    config = transformers.CONFIG_MAPPING[model_type].from_dict(raw)
    trust = bool((spec.get("kwargs") or {}).get("trust_remote_code", False))
    auto = getattr(transformers, AUTO_CLASSES[spec.get(KIND_KEY) or task_of(config, transformers, name)])
    with quiet(transformers):
        return auto.from_config(config, trust_remote_code=trust)


def task_of_model(model: nn.Module) -> str | None:
    """``"image"`` / ``"text"`` for a transformers classifier, None for any other model."""
    spec = getattr(model, "gpd_spec", None) or {}
    if spec.get(KIND_KEY):
        return str(spec[KIND_KEY])
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "architectures"):
        return None
    try:
        return task_of(config, import_transformers("a transformers model"), type(model).__name__)
    except ModelError:
        return None


def preprocessor_files(directory: Path) -> tuple[bool, bool]:
    """Whether ``directory`` holds (a tokenizer, an image processor)."""
    return any((directory / f).is_file() for f in TEXT_FILES), any((directory / f).is_file() for f in IMAGE_FILES)
