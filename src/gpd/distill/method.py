"""The interface of a KD method against the frozen static teacher.

A method owns three things: its options (a dataclass, which is also its section of the
run config: ``kd.*``, ``dkd.*``, ``reviewkd.*``), the trainable heads it adds next to
the student and D (ReviewKD's fusion heads; none for the logit-based methods), and its
loss. The :class:`~gpd.distill.Distiller` holds one method object and asks it, for each
role ("student", and "dynamic" for D), for the role's loss terms; following the
distiller contract of mdistiller, a method returns its weighted losses as a dict and the
training loop only sums them. Methods are looked up by name in
:data:`gpd.distill.kd_methods.KD_METHODS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
from torch import nn

from gpd.distill.output import StaticTargets
from gpd.errors import ConfigError

if TYPE_CHECKING:
    from gpd.config.schema import Config
    from gpd.distill.distiller import Distiller

TapRole = Literal["student", "dynamic", "teacher"]  # "teacher": the static teacher
M = TypeVar("M", bound="KDMethod")

__all__ = ["KDMethod", "NoOptions", "StaticTargets", "TapRole", "hard_labels"]


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices: ``y`` itself, or the argmax of soft targets (N, K) such as Mixup's."""
    return y.argmax(dim=-1) if y.is_floating_point() and y.dim() == 2 else y


@dataclasses.dataclass
class NoOptions:
    """The options of a method that has none."""


class KDMethod:
    """A KD method: its options (``Options``, a dataclass), its heads and its loss terms.

    Subclasses set ``name`` (its ``kd.method`` value), ``title`` (for messages),
    ``section`` (the config section that holds its options, None for none) and
    ``Options``, and override :meth:`losses`; a method with heads or feature taps
    overrides :meth:`build_heads` and :meth:`taps` too. A method object belongs to one
    Distiller (ReviewKD keeps the stage names it found there).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    section: ClassVar[str | None] = None
    Options: ClassVar[type] = NoOptions
    needs_teacher: ClassVar[bool] = True  # False only for "none": a static teacher goes with a method

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(self.options).__name__}")

    @classmethod
    def from_options(cls: type[M], options: Mapping[str, Any] | None = None) -> M:
        """The method with ``options`` (keyword values, as ``Distiller(kd_options=...)`` takes them)
        over its defaults; a name the method does not have is refused."""
        return cls(cls.parse_options(options))

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | None = None) -> Any:
        """The ``Options`` of keyword values over the defaults, each converted to its default's type."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        given = dict(options or {})
        unknown = sorted(set(given) - set(fields))
        if unknown:
            known = ", ".join(fields) or "none"
            raise ConfigError(f"unknown {cls.title} options {unknown}; use {known}")
        defaults = cls.Options()
        values = {name: _as_type_of(getattr(defaults, name), value) for name, value in given.items()}
        return cls.Options(**values)

    @classmethod
    def from_config(cls: type[M], cfg: Config) -> M:
        """The method with the options of its section of ``cfg`` (a copy: the config is not shared)."""
        if cls.section is None:
            return cls()
        section = getattr(cfg, cls.section)
        return cls(cls.Options(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls.Options)}))

    @property
    def ce_weight(self) -> float:
        """The weight of the CE terms of the student and D while this method is on (1 by default)."""
        return float(getattr(self.options, "ce_weight", 1.0))

    def build_heads(
        self, distiller: Distiller, input_size: tuple[int, ...] | None, example_input: Any
    ) -> dict[str, nn.Module]:
        """The method's trainable heads by role, for a Distiller whose networks are built; none here."""
        return {}

    def taps(self, model: nn.Module, role: TapRole) -> AbstractContextManager[list[torch.Tensor]]:
        """A context collecting the features of ``model`` (in ``role``) that the loss needs; none here."""
        return nullcontext([])

    def losses(
        self,
        role: str,
        logits: torch.Tensor,
        features: list[torch.Tensor],
        targets: StaticTargets,
        y: torch.Tensor,
        epoch: float | None,
        heads: nn.ModuleDict,
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms of ``role`` ("student" or "dynamic") against the static teacher's
        ``targets``: ``logits`` and ``features`` are the role's, ``y`` the targets (class indices or
        soft targets), ``heads`` the Distiller's heads by role. None here."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def _as_type_of(default: object, value: Any) -> Any:
    """``value`` converted to the type of the option's default (an int given for a float option, ...)."""
    return type(default)(value) if isinstance(default, (bool, int, float)) else value
