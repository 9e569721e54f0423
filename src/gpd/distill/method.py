"""The interface of a KD method against the frozen static teacher.

A method is an ``nn.Module`` that owns three things: its options (a dataclass, which is
also its section of the run config: ``kd.*``, ``dkd.*``, ``reviewkd.*``, or a user's own),
the trainable heads it adds next to the student and D (``heads``, by role; ReviewKD's
fusion heads, none for the logit-based methods) with any buffers, and its loss. The
:class:`~gpd.distill.Distiller` holds one method as its submodule ``kd_method`` and asks
it, for each role ("student", and "dynamic" for D), for the role's loss terms; following
the distiller contract of mdistiller, a method returns its weighted losses as a dict and
the training loop only sums them. Methods are found by name in the registry
(:mod:`gpd.distill.registry`), where users add their own with ``gpd.register_kd_method``.

A method builds its heads from :class:`KDNetworks`, which the Distiller passes in: the
networks in each role and an example batch, never the Distiller itself. The Distiller
runs the build inside :func:`~gpd.distill.probe.unchanged_state`, so probing forward
passes leave every BatchNorm statistic and buffer as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, TypeVar

import torch
from torch import nn

from gpd.distill.output import StaticTargets
from gpd.errors import ArgumentError

if TYPE_CHECKING:  # the pair's protocol: gpd.distill.pair imports the expansion engine
    from gpd.distill.pair import DynamicPair

TapRole = Literal["student", "dynamic", "teacher"]  # "teacher": the static teacher
M = TypeVar("M", bound="KDMethod")

__all__ = [
    "KDMethod",
    "KDNetworks",
    "KDOptions",
    "NoOptions",
    "RoleNetwork",
    "StaticTargets",
    "TapRole",
    "hard_labels",
    "role_networks",
]


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices: ``y`` itself, or the argmax of soft targets (N, K) such as Mixup's."""
    return y.argmax(dim=-1) if y.is_floating_point() and y.dim() == 2 else y


@dataclasses.dataclass
class NoOptions:
    """The options of a method that has none."""


@dataclasses.dataclass
class KDOptions:
    """What every KD method's options have: the weight of the CE terms of the student and D
    while the method is on (mdistiller's CIFAR-100 KD uses 0.1 with a KD weight of 0.9).
    A method's ``Options`` extend this dataclass with their own fields."""

    ce_weight: float = 1.0  # weight of the CE terms (student and D) with this method


class RoleNetwork(NamedTuple):
    """A network in one role: ``module`` is what feature taps hook (its stage names are the
    model's), ``forward`` runs its forward pass (the student's through its view of D)."""

    module: nn.Module
    forward: Callable[[Any], Any]


class KDNetworks(NamedTuple):
    """What a method may look at to build its heads: the student, D (None for the baseline), the
    static teacher (None without one) and ``example_input``, a batch every network takes (None
    when the Distiller was given neither ``input_size`` nor ``example_input``)."""

    student: RoleNetwork
    dynamic: RoleNetwork | None
    teacher: RoleNetwork | None
    example_input: Any


def role_networks(
    student: nn.Module, network: nn.Module, pair: DynamicPair | None, teacher: nn.Module | None, example_input: Any
) -> KDNetworks:
    """The networks of a Distiller that a KD method builds its heads from (:meth:`KDMethod.build`):
    ``student`` (the module its taps hook) run by ``pair`` or, for the baseline, by ``network``;
    D from ``pair``; the static ``teacher``. Never the Distiller itself."""
    return KDNetworks(
        RoleNetwork(student, pair.forward_student if pair is not None else network),
        RoleNetwork(pair.dynamic, pair.forward_dynamic) if pair is not None else None,
        RoleNetwork(teacher, teacher) if teacher is not None else None,
        example_input,
    )


class KDMethod(nn.Module):
    """A KD method: its options (``Options``, a dataclass), its heads and its loss terms.

    Subclasses set ``name`` (its ``kd.method`` value), ``title`` (for messages), ``section``
    (the config section that holds its options, None for none) and ``Options`` (best a
    :class:`KDOptions` subclass, which gives it ``ce_weight``), and override :meth:`losses`;
    a method with heads or feature taps overrides :meth:`build` and :meth:`taps` too. An
    ``Options`` dataclass may define ``problems() -> list[str]``, its range checks
    ("temperature must be > 0, got 0"), which both the API and the config loader report.
    A method object belongs to one Distiller (ReviewKD keeps the stage names it found there).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    section: ClassVar[str | None] = None
    Options: ClassVar[type] = KDOptions
    needs_teacher: ClassVar[bool] = True  # False only for "none": a static teacher goes with a method

    def __init__(self, options: Any = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise ArgumentError(
                f"{type(self).__name__} takes {self.Options.__name__}, got {type(self.options).__name__}"
            )
        problems = option_problems(self.options)
        if problems:
            raise ArgumentError(f"{self.display_name()} option {problems[0]}")
        self.heads = nn.ModuleDict()  # the method's trainable heads by role ("student", "dynamic")

    @classmethod
    def display_name(cls) -> str:
        return cls.title or cls.name or cls.__name__

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
            raise ArgumentError(f"unknown {cls.display_name()} options {unknown}; use {known}")
        defaults = cls.Options()
        values = {name: _as_type_of(getattr(defaults, name), value) for name, value in given.items()}
        return cls.Options(**values)

    @classmethod
    def from_config(cls: type[M], section: Any = None) -> M:
        """The method with the options of its config ``section`` (a dataclass or a mapping holding at
        least the ``Options`` fields; copied, so the config is not shared). None: the defaults."""
        if section is None:
            return cls()
        read = section.get if isinstance(section, Mapping) else lambda name: getattr(section, name)
        return cls(cls.Options(**{f.name: read(f.name) for f in dataclasses.fields(cls.Options)}))

    @property
    def ce_weight(self) -> float:
        """The weight of the CE terms of the student and D while this method is on (1 by default)."""
        return float(getattr(self.options, "ce_weight", 1.0))

    def build(self, networks: KDNetworks) -> None:
        """Create the method's heads (in :attr:`heads`, by role) for the networks of a Distiller
        whose student and D are built; none here. Runs before the method is used."""

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
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms of ``role`` ("student" or "dynamic") against the static teacher's
        ``targets``: ``logits`` and ``features`` are the role's, ``y`` the targets (class indices or
        soft targets). None here."""
        return {}

    def extra_repr(self) -> str:
        return str(self.options)


def option_problems(options: Any) -> list[str]:
    """The range problems an ``Options`` object reports (its ``problems()``, if it has one)."""
    problems = getattr(options, "problems", None)
    return list(problems()) if callable(problems) else []


def _as_type_of(default: object, value: Any) -> Any:
    """``value`` converted to the type of the option's default (an int given for a float option, ...)."""
    return type(default)(value) if isinstance(default, (bool, int, float)) else value
