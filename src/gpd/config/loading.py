"""Load a run's configuration: defaults, then a YAML file, then ``key=value`` overrides."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gpd.choices import check_choice, choice_error, literal_of
from gpd.config.kd_sections import canonical_method, schema_for, selected_method, validate_kd
from gpd.config.schema import Config
from gpd.deprecated import upgrade_config_layer, upgrade_overrides
from gpd.errors import ConfigError, GPDError, ModelError, first_line

DEFAULT_CONFIG = "fashion_mnist/demo"


def bundled_config_names() -> list[str]:
    """Names of the configs shipped with gpd, such as ``fashion_mnist/scratch_gpd``."""
    root = resources.files("gpd.config") / "bundled"
    names = []
    for group in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        names += [
            f"{group.name}/{f.name[:-5]}"
            for f in sorted(group.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".yaml")
        ]
    return names


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path as given, or the file of a bundled config name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    name = name_or_path.removesuffix(".yaml")
    if name in bundled_config_names():
        return Path(str(resources.files("gpd.config") / "bundled" / f"{name}.yaml"))
    raise ConfigError(
        f"unknown config '{name_or_path}': give a YAML file or one of {', '.join(bundled_config_names())}"
    )


def _one_line(err: Exception, base: DictConfig, layer: DictConfig, where: str) -> str:
    """A one-line message for an error of merging ``layer`` (from ``where``) into ``base``."""
    msg = str(getattr(err, "msg", None) or err).strip()
    msg = msg.splitlines()[0] if msg else type(err).__name__
    key = getattr(err, "full_key", None)
    in_file = f" {where}" if where.startswith("in ") else ""  # an override names its key already
    if isinstance(err, ConfigKeyError):
        if not key:
            return f"empty config key {where}"
        hint = f" ({msg.split('. ', 1)[1]})" if "Did you mean" in msg else ""
        return f"unknown config key '{key}'{hint}{in_file}"
    choice = _literal_key(str(key)) if key and isinstance(err, ValidationError) else None
    if choice is not None:  # a value outside a Literal's choices: the message validate() gives
        return choice_error(str(key), OmegaConf.select(layer, str(key)), choice[0], optional=choice[1])
    if key:
        return f"bad value for '{key}'{in_file}: {msg}"
    section = _misused_section(base, layer)
    if section is not None:
        first = next(iter(OmegaConf.select(base, section)), "...")
        return f"'{section}' is a section of the config, not a value; set its keys instead, e.g. {section}.{first}=..."
    return f"{msg} {where}"


def _literal_key(key: str) -> tuple[Any, bool] | None:
    """``(the Literal, optional)`` of the schema's key ``key`` (dotted) if a Literal types it, else None."""
    owner: Any = Config
    *sections, name = key.split(".")
    for section in sections:
        owner = typing.get_type_hints(owner).get(section) if is_dataclass(owner) else None
    return literal_of(typing.get_type_hints(owner).get(name)) if is_dataclass(owner) else None


def _choice_keys(node: object, prefix: str = "") -> Iterator[tuple[str, object, Any, bool]]:
    """``(dotted key, value, Literal, optional)`` for every key of the config typed by a Literal."""
    hints = typing.get_type_hints(type(node))
    for f in fields(node):  # type: ignore[arg-type]
        value = getattr(node, f.name)
        if is_dataclass(value):
            yield from _choice_keys(value, f"{prefix}{f.name}.")
        else:
            choice = literal_of(hints.get(f.name))
            if choice is not None:
                yield f"{prefix}{f.name}", value, *choice


def _misused_section(base: DictConfig, layer: DictConfig, prefix: str = "") -> str | None:
    """The dotted key where ``layer`` puts a plain value in place of a config section, if any."""
    for key in layer:
        if not isinstance(key, str) or key not in base:  # a section is a dataclass field: a str key
            continue
        if is_dataclass(OmegaConf.get_type(base, key)):
            value = layer._get_node(key)
            if not isinstance(value, DictConfig):
                return f"{prefix}{key}"
            found = _misused_section(base[key], value, f"{prefix}{key}.")
            if found:
                return found
    return None


def _merge(base: DictConfig, layer: DictConfig, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        raise ConfigError(_one_line(err, base, layer, where)) from None


def _upgrade_layer(layer: DictConfig, where: str) -> DictConfig:
    """``layer`` with the old key names (``gpd.kd_weight``) renamed, warning (gpd.deprecated)."""
    content = OmegaConf.to_container(layer, resolve=False)
    upgraded = upgrade_config_layer(content, where)  # type: ignore[arg-type]
    return layer if upgraded is content else OmegaConf.create(upgraded)


def load_config(config: str | None = None, overrides: list[str] | None = None) -> Config:
    """Merge the schema's defaults, a config file (or bundled name) and dotted overrides.

    Old key names, in the file or in an override, are renamed here, once, with a warning.
    The schema holds the section of the KD method that ``kd.method`` selects (gpd.config.kd_sections)."""
    layers: list[tuple[DictConfig, str]] = []
    if config is not None:
        path = resolve_config_path(config)
        try:
            layer = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors come in many classes
            raise ConfigError(f"cannot read config {path}: {first_line(err)}") from None
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"config {path} must be a mapping of sections (data:, model:, train: ...), not a list")
        layers.append((_upgrade_layer(layer, f"in {path}"), f"in {path}"))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=5)")
    for item in upgrade_overrides(list(overrides or [])):  # one at a time, so an error names its override
        try:
            layers.append((OmegaConf.from_dotlist([item]), f"(override '{item}')"))
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad override '{item}': {first_line(err)}") from None
    merged: DictConfig = OmegaConf.structured(schema_for(selected_method([layer for layer, _ in layers])))
    for layer, where in layers:
        merged = _merge(merged, layer, where)
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    cfg.kd.method = canonical_method(cfg.kd.method)
    cfg.task = canonical_method(cfg.task)  # a task's file path made absolute, as kd.method's
    cfg.data.name = canonical_method(cfg.data.name)  # and a data builder's (gpd.data.user)
    validate(cfg)
    _check_names(cfg)
    return cfg


def _check_names(cfg: Config) -> None:
    """Refuse an unknown data set or model name now, before a run directory is made or data is loaded."""
    from gpd.data.datasets import KNOWN_DATASETS  # not at the top: these import much of gpd
    from gpd.models import check_model_name, import_path

    if import_path.is_import_path(cfg.data.name):  # a builder of the user's own: its file and function exist
        try:
            import_path.resolve_factory(cfg.data.name, what="data set")
        except ModelError as err:
            raise ConfigError(f"data.name: {err}") from None
    elif cfg.data.name.lower().replace("-", "_") not in KNOWN_DATASETS:
        raise ConfigError(
            f"data.name: unknown data set '{cfg.data.name}'; known data sets: {', '.join(KNOWN_DATASETS)}, or a "
            "builder of your own as path/to/file.py:FUNCTION or MODULE:FUNCTION"
        )
    for key, name in (("model.student", cfg.model.student), ("teacher.model", cfg.teacher.model)):
        if name is not None:
            try:
                check_model_name(name)
            except ModelError as err:
                raise ConfigError(f"{key}: {err}") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express, and the choices of the Literal-typed keys
    (OmegaConf checks those too, but a Config built in code may hold anything)."""
    for key, value, choices, optional in _choice_keys(cfg):
        check_choice(key, value, choices, optional=optional)
    t, d = cfg.train, cfg.data
    _require(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require(t.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    _require(t.lr > 0 and math.isfinite(t.lr), f"train.lr must be a positive number, got {t.lr}")
    _require(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _require(t.log_interval_s >= 0, f"train.log_interval_s must be >= 0 (0: no progress lines), got {t.log_interval_s}")
    _require(t.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}")
    _require(0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    _require(t.grad_clip is None or t.grad_clip > 0, f"train.grad_clip must be > 0 or null, got {t.grad_clip}")
    _require(t.grad_probe_every >= 0, f"train.grad_probe_every must be >= 0 (0: never), got {t.grad_probe_every}")
    _require(
        t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:"),
        f"train.device must be auto, cpu, cuda, cuda:N or mps, got '{t.device}'",
    )
    _require(t.ema_decay is None or 0 < t.ema_decay < 1, f"train.ema_decay must be in (0, 1), got {t.ema_decay}")
    _require(t.ema_epochs > 0, f"train.ema_epochs must be > 0, got {t.ema_epochs}")
    _require(t.ema_images is None or t.ema_images >= 1, f"train.ema_images must be >= 1, got {t.ema_images}")
    _require(
        t.ema_decay is None or t.ema_images is None,
        "train.ema_decay (a per-step decay) and train.ema_images (a horizon) both set the EMA's decay; set only one",
    )
    _require(t.nonfinite_check_every >= 1, f"train.nonfinite_check_every must be >= 1, got {t.nonfinite_check_every}")
    _require(
        t.threads == "auto" or (t.threads.isdigit() and int(t.threads) >= 1),
        f"train.threads must be auto or a positive number of threads, got '{t.threads}'",
    )
    _require(
        cfg.teacher.pretrained_file is None or cfg.teacher.model is not None,
        "teacher.pretrained_file needs teacher.model, the architecture the weights are loaded into",
    )
    has_teacher = cfg.teacher.model is not None or cfg.teacher.checkpoint is not None
    _validate_task(cfg)
    validate_kd(cfg, has_teacher)  # kd.method, the Distiller's arguments (the API's check) and the method sections
    _require(d.train_subset is None or d.train_subset >= 1, f"data.train_subset must be >= 1, got {d.train_subset}")
    _require(d.image_size is None or d.image_size >= 8, f"data.image_size must be >= 8, got {d.image_size}")
    _require(d.test_subset is None or d.test_subset >= 1, f"data.test_subset must be >= 1, got {d.test_subset}")
    _require(d.max_length is None or d.max_length >= 2, f"data.max_length must be >= 2 tokens, got {d.max_length}")
    _require(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    _require(
        d.val_split is None or (0 < d.val_split < 1 or (d.val_split >= 1 and d.val_split == int(d.val_split))),
        f"data.val_split must be a fraction in (0, 1) or a whole number of samples, got {d.val_split}",
    )
    _validate_augmentation(cfg)
    for role, section in (("student", cfg.student), ("teacher", cfg.teacher)):
        sources = [k for k, on in (("pretrained", section.pretrained), ("checkpoint", section.checkpoint is not None),
                                   ("pretrained_file", section.pretrained_file is not None)) if on]  # fmt: skip
        _require(
            len(sources) <= 1,
            f"{' and '.join(f'{role}.{k}' for k in sources)} {'both' if len(sources) == 2 else 'all'} give the "
            f"{role}'s starting weights; set only one of them",
        )


def _validate_task(cfg: Config) -> None:
    """``task`` (a registered name or an import path) and ``task_options``: the task is built once here."""
    from gpd.distill.tasks import make_task, task_class

    task_class(cfg.task, "task", ConfigError)
    try:
        make_task(cfg.task, cfg.task_options, cfg.train.label_smoothing)
    except ConfigError:
        raise
    except GPDError as err:
        raise ConfigError(f"task_options: {first_line(err)}") from None


def _validate_augmentation(cfg: Config) -> None:
    """The DeiT recipe's keys (data.randaugment ... data.mixup_switch_prob)."""
    d = cfg.data
    _require(0 <= d.random_erasing <= 1, f"data.random_erasing must be a probability in [0, 1], got {d.random_erasing}")
    _require(
        d.color_jitter is None or d.color_jitter >= 0, f"data.color_jitter must be >= 0 or null, got {d.color_jitter}"
    )
    _require(d.mixup >= 0 and math.isfinite(d.mixup), f"data.mixup must be an alpha >= 0 (0: off), got {d.mixup}")
    _require(d.cutmix >= 0 and math.isfinite(d.cutmix), f"data.cutmix must be an alpha >= 0 (0: off), got {d.cutmix}")
    _require(0 <= d.mixup_prob <= 1, f"data.mixup_prob must be a probability in [0, 1], got {d.mixup_prob}")
    _require(
        0 <= d.mixup_switch_prob <= 1,
        f"data.mixup_switch_prob must be a probability in [0, 1], got {d.mixup_switch_prob}",
    )
    if d.randaugment is not None:
        _check_randaugment(d.randaugment)
    from gpd.data.augment import AugmentRecipe  # not at the top: gpd.data imports torchvision

    if AugmentRecipe.from_config(d).active:
        keys = "data.randaugment, data.random_erasing, data.color_jitter and data.interpolation"
        _require(
            d.name.lower().replace("-", "_") in ("imagefolder", "cifar10", "cifar100"),
            f"{keys} work with imagefolder, cifar10 and cifar100 (colour images), not {d.name}",
        )
        _require(d.augment, f"{keys} need data.augment=true")
    if d.mixup > 0 or d.cutmix > 0:
        _require(
            cfg.train.batch_size % 2 == 0,
            "data.mixup/data.cutmix mix each batch with its reverse and need an even train.batch_size, "
            f"got {cfg.train.batch_size}",
        )


def _check_randaugment(spec: str) -> None:
    """A timm auto_augment string that timm can build (rand-..., augmix-..., or an AutoAugment policy)."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    build: Callable[[str, dict[str, Any]], object]
    if spec.startswith("rand"):
        build = rand_augment_transform
    else:
        build = augment_and_mix_transform if spec.startswith("augmix") else auto_augment_transform
    hint = f"data.randaugment: '{spec}' is not a timm auto_augment string (e.g. rand-m9-mstd0.5-inc1)"
    if spec.startswith("rand"):  # timm skips a section without a number (rand-m-...) silently
        bare = [p for p in spec.split("-")[1:] if not p.startswith("t") and not any(c.isdigit() for c in p)]
        _require(not bare, f"{hint}: section '{bare[0] if bare else ''}' has no value")
    try:
        build(spec, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except Exception as err:  # timm raises AssertionError/KeyError/ValueError for a bad string
        raise ConfigError(f"{hint}: {first_line(err)}") from None


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
