"""The one check of a Distiller's arguments, for ``Distiller(...)`` and for the config loader alike.

The rules (what goes with what, the ranges) are written once, here; each caller names the
arguments its own way: the API by keyword (``share_parameters=False``) with
:class:`~gpd.errors.ArgumentError`, the config loader by key (``gpd.share=false``) with
:class:`~gpd.errors.ConfigError`, through a :class:`Spelling`. The messages are one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from gpd.choices import StepRule, check_choice
from gpd.distill.registry import KD_METHODS
from gpd.errors import ArgumentError


class Spelling(NamedTuple):
    """How a caller writes an argument and its value: the name of each (``names``, by keyword of
    ``Distiller``) and the values as Python (``True``, ``'plain'``) or as YAML (``true``, ``plain``)."""

    names: Mapping[str, str]
    yaml: bool
    error: type[Exception]

    def name(self, argument: str) -> str:
        return self.names.get(argument, argument)

    def set(self, argument: str, value: object) -> str:
        """``argument=value`` as the caller writes it: ``share_parameters=False`` or ``gpd.share=false``."""
        if self.yaml:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
        else:
            shown = repr(value)
        return f"{self.name(argument)}={shown}"


API = Spelling({"teacher": "teacher="}, yaml=False, error=ArgumentError)


class DistillerArguments(NamedTuple):
    """The arguments of a Distiller that are checked together (``kd``: the method's name, or
    ``needs_teacher`` of a method given as an object)."""

    has_teacher: bool
    kd: str
    needs_teacher: bool
    dynamic_teacher: bool
    share_parameters: bool
    step_rule: str
    ratio: float
    sce_weight: float
    sce_eps: float
    noise_std: float


def check_distiller_arguments(args: DistillerArguments, spelling: Spelling = API) -> None:
    """Refuse arguments that do not go together or are out of range, with ``spelling.error``."""
    name = spelling.name
    check_choice(name("step_rule"), args.step_rule, StepRule, error=spelling.error)
    _require(
        math.isfinite(args.ratio) and args.ratio >= 1,
        f"{name('ratio')} must be >= 1 (the dynamic teacher is wider), got {args.ratio}",
        spelling,
    )
    _require(args.sce_weight >= 0, f"{name('sce_weight')} must be >= 0, got {args.sce_weight}", spelling)
    _require(0 <= args.sce_eps <= 1, f"{name('sce_eps')} must be in [0, 1], got {args.sce_eps}", spelling)
    _require(args.noise_std >= 0, f"{name('noise_std')} must be >= 0, got {args.noise_std}", spelling)
    dynamic_on = spelling.set("dynamic_teacher", True)
    _require(
        args.dynamic_teacher or args.share_parameters,
        f"{spelling.set('share_parameters', False)} separates D's parameters from the student's; it needs {dynamic_on}",
        spelling,
    )
    _require(
        args.step_rule == "paper" or (args.dynamic_teacher and args.share_parameters),
        f"{spelling.set('step_rule', args.step_rule)} changes how shared parameters are stepped; "
        f"it needs {dynamic_on} and {spelling.set('share_parameters', True)}",
        spelling,
    )
    methods = [key for key, cls in KD_METHODS.items() if cls.needs_teacher]
    listed = f"{', '.join(methods[:-1])} or {methods[-1]}" if len(methods) > 1 else "".join(methods)
    _require(
        args.has_teacher == args.needs_teacher,
        f"a static teacher ({name('teacher')}) goes with a KD method ({name('kd')}={listed}), "
        f"got {name('kd')}={args.kd} and {'a' if args.has_teacher else 'no'} teacher",
        spelling,
    )


def _require(ok: bool, message: str, spelling: Spelling) -> None:
    if not ok:
        raise spelling.error(message)
