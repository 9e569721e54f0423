"""The KD methods in a run config: ``kd.method`` and the methods' sections, all from the registry.

``kd.method`` names a method of :data:`gpd.distill.KD_METHODS` (built-in or registered with
``gpd.register_kd_method``) or gives an import path to a method class. Each method's options
are its config section (``Options`` under its ``section`` name): gpd's built-in sections are
fields of :class:`~gpd.config.schema.Config`; a user's method brings its section into the
schema of the run that selects it (:func:`schema_for`), so that ``<section>.<option>=...`` is
checked like any key and written to the run's config.yaml, and ``--resume`` reads it back.
The options' range checks are each ``Options``'s ``problems()`` (:func:`option_problems`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpd.config.schema import Config
from gpd.distill import KD_METHODS, KDMethod
from gpd.distill.arguments import DistillerArguments, Spelling, check_distiller_arguments
from gpd.distill.method import option_problems
from gpd.distill.tasks import task_kd_method_class
from gpd.errors import ConfigError

KEY = "kd.method"

# the Distiller's arguments as the config names them (gpd.distill.arguments writes the messages)
CONFIG_SPELLING = Spelling(
    {
        "teacher": "teacher.model / teacher.checkpoint",
        "kd": KEY,
        "dynamic_teacher": "gpd.enabled",
        "share_parameters": "gpd.share",
        "step_rule": "gpd.step_rule",
        "ratio": "gpd.ratio",
        "sce_weight": "gpd.sce_weight",
        "sce_eps": "gpd.sce_eps",
        "noise_std": "gpd.noise_std",
    },
    yaml=True,
    error=ConfigError,
)


def method_class(name: str, task: str = "classification") -> type[KDMethod]:
    """The class ``kd.method`` names for ``task`` (an import path is loaded and registered; ``cwd``
    is segmentation's); ConfigError otherwise."""
    return task_kd_method_class(name, task, KEY, ConfigError)


def selected_method(layers: Sequence[DictConfig]) -> str | None:
    """The ``kd.method`` the last of ``layers`` (a YAML file, then overrides) that sets it gives."""
    chosen = None
    for layer in layers:
        try:
            value = OmegaConf.select(layer, KEY, default=None)
        except Exception:  # a misused section (kd: 5): the merge reports it
            continue
        if isinstance(value, str):
            chosen = value
    return chosen


def schema_for(name: str | None) -> type[Config]:
    """:class:`Config`, with the section of the method ``name`` when it is a user's method with a
    section of its own (a built-in section of the same name must be of the method's options)."""
    if name is None or (name not in KD_METHODS and ":" not in name):  # a task's own method (cwd): a built-in section
        return Config
    cls = method_class(name)
    if cls.section is None:
        return Config
    declared = typing.get_type_hints(Config).get(cls.section)
    if declared is None:
        return _with_section(cls.section, cls.Options)
    if not (isinstance(declared, type) and issubclass(declared, cls.Options)):
        raise ConfigError(
            f"{KEY}={name}: {cls.__name__}'s section '{cls.section}' is a section of gpd's config already; "
            "give the method another section name"
        )
    return Config


@functools.cache
def _with_section(section: str, options: type) -> type[Config]:
    field = dataclasses.field(default_factory=options)
    return dataclasses.make_dataclass("Config", [(section, options, field)], bases=(Config,))


def canonical_method(name: str) -> str:
    """``kd.method`` with a file path made absolute, so that the run's config.yaml resumes from anywhere."""
    from gpd.models import import_path  # not at the top: the model zoo is needed for import paths only

    return import_path.canonical(name) if import_path.is_import_path(name) else name


def _sections(cfg: Config) -> Iterator[tuple[str, Any]]:
    """``(section name, options)`` of every registered method and the selected one, that ``cfg`` has."""
    classes = [*KD_METHODS.values(), method_class(cfg.kd.method, cfg.task)]
    seen = set()
    for cls in classes:
        if cls.section and cls.section not in seen and hasattr(cfg, cls.section):
            seen.add(cls.section)
            yield cls.section, getattr(cfg, cls.section)


def validate_kd(cfg: Config, has_teacher: bool) -> None:
    """``kd.method`` (a registered name or an import path), the Distiller's arguments as the config
    gives them (one check with the API's, gpd.distill.arguments) and every method section's ranges."""
    cls = method_class(cfg.kd.method, cfg.task)
    g = cfg.gpd
    arguments = DistillerArguments(has_teacher, cfg.kd.method, cls.needs_teacher, g.enabled, g.share,
                                   g.step_rule, g.ratio, g.sce_weight, g.sce_eps, g.noise_std)  # fmt: skip
    check_distiller_arguments(arguments, CONFIG_SPELLING)
    for section, options in _sections(cfg):
        problems = option_problems(options)
        if problems:
            raise ConfigError(f"{section}.{problems[0]}")
