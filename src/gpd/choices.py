"""The string choices of gpd's options, each declared once as a ``typing.Literal``.

The config schema (:mod:`gpd.config.schema`) types its keys with these aliases, so
OmegaConf refuses any other value; the library's arguments (``Distiller(kd=...)``,
``gpd.expand(layout=...)``) use the same aliases as type hints. :func:`check_choice`
is the one check of a value at run time and :func:`choice_error` its message; both
read the allowed values from the alias itself (``typing.get_args``), so adding a value
to an alias is the whole change.

This module sits at the bottom of the package: it imports nothing of gpd but its errors.
"""

from __future__ import annotations

import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from gpd.errors import ConfigError

KDMethodName = Literal["none", "kd", "dkd", "reviewkd"]  # gpd's KD methods (kd.method also takes registered names)
BranchKind = Literal["none", "orepa"]  # gpd.branches: six-branch blocks for 3x3 stride-1 convs, or none
BranchInit = Literal["default", "identity"]  # gpd.branch_init: how branch blocks start
LayoutChoice = Literal["auto", "tiled", "interleaved"]  # gpd.layout: how D lays out a channel's copies
StepRule = Literal["paper", "plain"]  # gpd.step_rule: the paper's per-layer steps, or the plain networks' steps
PrecisionName = Literal["fp32", "bf16", "fp16"]  # train.precision
MemoryMode = Literal["joint", "sequential"]  # train.memory_mode
NonfinitePolicy = Literal["stop", "skip"]  # train.on_nonfinite
InterpolationName = Literal["bilinear", "bicubic", "nearest"]  # data.interpolation (or null)

T = TypeVar("T")


def literal_of(hint: Any) -> tuple[Any, bool] | None:
    """``(the Literal, optional)`` when ``hint`` is a Literal or an Optional Literal, else None."""
    if get_origin(hint) is Literal:
        return hint, False
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        literals = [arg for arg in args if get_origin(arg) is Literal]
        if len(literals) == 1 and len(args) == 2 and type(None) in args:
            return literals[0], True
    return None


def choices_of(alias: Any) -> tuple[str, ...]:
    """The values an alias allows, in its order: ``choices_of(MemoryMode) == ("joint", "sequential")``."""
    found = literal_of(alias)
    if found is None:
        raise TypeError(f"{alias!r} is not a Literal alias")
    return tuple(get_args(found[0]))


def describe_choices(alias: Any, *, optional: bool = False) -> str:
    """``'a, b or c'`` (``'a, b, c or null'`` when None is allowed too)."""
    names = [str(value) for value in choices_of(alias)] + (["null"] if optional else [])
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def choice_error(key: str, value: object, alias: Any, *, optional: bool = False) -> str:
    """The one-line message for a value outside the choices: ``"train.memory_mode must be joint or
    sequential, got 'x'"``."""
    got = "null" if value is None else f"'{value}'"
    return f"{key} must be {describe_choices(alias, optional=optional)}, got {got}"


def check_choice(key: str, value: T, alias: Any, *, optional: bool = False, error: type[Exception] = ConfigError) -> T:
    """``value`` if ``alias`` allows it (or it is None and ``optional``), else ``error`` with :func:`choice_error`."""
    if (value is None and optional) or value in choices_of(alias):
        return value
    raise error(choice_error(key, value, alias, optional=optional))
