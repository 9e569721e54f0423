"""The rule API and the rule set: how each layer type becomes its wide copy in D.

A rule receives the student's module and a :class:`LayerContext` (its name, the width
plan, and whether its input and output axes are expanded). It returns an
:class:`ExpandedLayer`: D's module, built by copying the student's module and
replacing its tensors and size attributes (never by calling a constructor, so
subclasses such as timm's ``BatchNormAct2d`` keep working), and for every parameter
a :class:`ParamSlice` that says how the student's value is read back out of D's.

The rules live in a :class:`RuleSet`; ``gpd.expand`` uses :data:`RULES`. Users add rules
for their own layers with :func:`register_expansion_rule`. gpd's own rules (torch's layers
in :mod:`gpd.expansion.torch_rules`, timm's and torchvision's once those are imported,
the branch kind and blocks of :mod:`gpd.branches` at their first lookup,
:mod:`gpd.expansion.pending`) are registered as built-ins. The conflict policy
(docs/expansion_rules.md, "The rule set"):

* a rule of the user's for a class replaces gpd's built-in rule for that class, whether
  the built-in was loaded before or after it (lazy timm rules never replace a user's);
* a second rule for a class that already has one from the same side (user or built-in)
  raises ``ValueError`` unless ``override=True``; registering the same rule again is a no-op;
* :meth:`RuleSet.override` replaces a class's rule for a ``with`` block and restores the
  previous one (or none) on exit.

Channel tensors (:func:`register_channel_tensors`) and branch kinds
(:meth:`RuleSet.register_branch_kind`) follow the same policy.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import nn

from gpd.channel_maps import ChannelMap, WidthPlan, identity_map
from gpd.errors import ArgumentError, ExpansionError
from gpd.expansion.layout import MeasuredInput
from gpd.expansion.pending import BuiltinProvider, PendingRegistrations
from gpd.sharing.param_slice import ParamSlice

M = TypeVar("M", bound=nn.Module)
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class LayerContext:
    """What a rule needs to know about the layer it expands.

    ``measured`` is the layout of the layer's input in D, measured while D is built
    (:mod:`gpd.expansion.layout`); ``in_map`` returns it where it describes the axis
    asked for, the tiled map otherwise. A ``channelwise`` layer's output keeps its
    input's layout, so its ``out_map`` is the measured one too.
    """

    name: str
    plan: WidthPlan
    expand_input: bool = True
    expand_output: bool = True
    measured: MeasuredInput | None = None
    channelwise: bool = False
    known_counts: frozenset[int] = frozenset()  # channel counts of the model's expanded axes

    def _measured(self, size: int, dim: int | None) -> ChannelMap | None:
        return self.measured.along(size, dim) if self.measured is not None else None

    def in_map(self, size: int, dim: int | None = None) -> ChannelMap:
        if self.expand_input:
            measured = self._measured(size, dim)
            if measured is not None:
                return measured
        return self.plan.map(size) if self.expand_input else identity_map(size)

    def out_map(self, size: int, dim: int | None = None) -> ChannelMap:
        if self.channelwise and self.expand_output:
            measured = self._measured(size, dim)
            if measured is not None:
                return measured
        return self.plan.map(size) if self.expand_output else identity_map(size)

    def reads_other_axis(self, in_map: ChannelMap) -> bool:
        """Whether a mixing layer meant to read expanded channels reads an unexpanded axis
        of an expanded tensor (MLP-Mixer's token MLP): then its output is not expanded either."""
        return bool(
            self.expand_input
            and in_map.is_identity
            and self.measured is not None
            and self.measured.maps
            and self.plan.dynamic_size(in_map.student_size) != in_map.student_size
        )

    def error(self, module: object, why: str) -> ExpansionError:
        return ExpansionError(f"layer '{self.name}' ({type(module).__name__}): {why}")


@dataclass
class ExpandedLayer:
    """A rule's result: D's module and how to derive each student parameter from it.

    ``params`` is keyed by parameter name relative to the module ("weight",
    "fc1.bias", ...). ``output_map`` describes D's output channels, used to compare
    D's activations with the student's when verification fails.
    """

    module: nn.Module
    params: dict[str, ParamSlice]
    output_map: ChannelMap | None = None


class ExpansionRule(Protocol):
    def __call__(self, module: nn.Module, ctx: LayerContext) -> ExpandedLayer: ...


@dataclass(frozen=True)
class RuleEntry:
    """A registered rule.

    ``channelwise`` rules keep the channel layout of their input (norms, activations):
    such a layer is left unexpanded where it sits before the layer that reads the
    image or after the layer that writes the logits.
    """

    rule: ExpansionRule
    channelwise: bool


@dataclass(frozen=True)
class ChannelTensors:
    """Declared tensors of a container: each one's channel axis, and those that scale activations."""

    axes: dict[str, int]
    multiplying: frozenset[str]


@dataclass(frozen=True)
class BranchKind:
    """A kind of multi-branch block: ``add(model, init)`` gives a copy of ``model`` with the blocks
    (``gpd.expand(branches=name)``), ``merge(model)`` a copy with every block merged into plain layers."""

    add: Callable[[nn.Module, str], nn.Module]
    merge: Callable[[nn.Module], nn.Module]


class RuleSet:
    """Expansion rules, declared channel tensors and branch kinds, each on two sides: the user's
    and gpd's built-ins. See the module docstring for the conflict policy."""

    def __init__(self) -> None:
        self._rules: tuple[dict[type, RuleEntry], dict[type, RuleEntry]] = ({}, {})  # (built-in, user)
        self._tensors: tuple[dict[type, ChannelTensors], dict[type, ChannelTensors]] = ({}, {})
        self._branch_kinds: tuple[dict[str, BranchKind], dict[str, BranchKind]] = ({}, {})
        self._pending = PendingRegistrations()
        self._builtin_depth = 0

    # -- registering -------------------------------------------------------------------

    @contextlib.contextmanager
    def builtin_registrations(self) -> Iterator[None]:
        """Registrations made inside this block are gpd's built-ins (a user's rule replaces them)."""
        self._builtin_depth += 1
        try:
            yield
        finally:
            self._builtin_depth -= 1

    def _side(self, pair: tuple[dict[K, V], dict[K, V]]) -> dict[K, V]:
        return pair[0] if self._builtin_depth else pair[1]

    @staticmethod
    def _put(side: dict[K, V], key: K, value: V, override: bool, what: str) -> None:
        old = side.get(key)
        if old is not None and old != value and not override:
            raise ArgumentError(
                f"{what} is registered already; pass override=True to replace it "
                "(or use gpd.expansion.RULES.override for a with-block)"
            )
        side[key] = value

    def register(
        self,
        module_class: type[M],
        rule: Callable[[M, LayerContext], ExpandedLayer],
        *,
        channelwise: bool = False,
        override: bool = False,
    ) -> None:
        """Register ``rule`` for ``module_class`` and its subclasses (the nearest class wins).

        A rule registered for a container class handles all of its submodules; the
        expansion does not descend into it.
        """
        if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
            raise TypeError(f"module_class must be an nn.Module subclass, got {module_class!r}")
        # the rule is only ever called with instances of module_class (find() walks the MRO)
        entry = RuleEntry(rule=cast(ExpansionRule, rule), channelwise=channelwise)
        self._put(self._side(self._rules), module_class, entry, override, f"a rule for {module_class.__qualname__}")

    def register_channel_tensors(
        self, module_class: type[nn.Module], axes: dict[str, int], *, multiplies: bool = False, override: bool = False
    ) -> None:
        """Declare tensors ``module_class`` holds directly (see :func:`register_channel_tensors`)."""
        declared = ChannelTensors(dict(axes), frozenset(axes) if multiplies else frozenset())
        what = f"the channel tensors of {module_class.__qualname__}"
        self._put(self._side(self._tensors), module_class, declared, override, what)

    def register_branch_kind(
        self,
        name: str,
        add: Callable[[nn.Module, str], nn.Module],
        merge: Callable[[nn.Module], nn.Module],
        *,
        override: bool = False,
    ) -> None:
        """Offer ``gpd.expand(branches=name)``; exports apply ``merge`` (see :class:`BranchKind`)."""
        kind = BranchKind(add=add, merge=merge)
        self._put(self._side(self._branch_kinds), name, kind, override, f"the branch kind {name!r}")

    @contextlib.contextmanager
    def override(
        self, module_class: type[M], rule: Callable[[M, LayerContext], ExpandedLayer], *, channelwise: bool = False
    ) -> Iterator[None]:
        """Use ``rule`` for ``module_class`` inside the ``with`` block; the user's previous rule for
        the class (or none) is back on exit. gpd's built-in rule, if any, is left alone."""
        self.run_pending_registrations()
        users = self._rules[1]
        previous = users.get(module_class)
        self.register(module_class, rule, channelwise=channelwise, override=True)
        try:
            yield
        finally:
            if previous is None:
                users.pop(module_class, None)
            else:
                users[module_class] = previous

    def register_when_imported(self, package: str, registration: Callable[[], None]) -> None:
        """Run ``registration`` (which imports ``package``) once ``package`` has been imported, as built-ins:
        now if it is, else at the first lookup after it is (:mod:`gpd.expansion.pending`)."""
        if package in sys.modules:
            with self.builtin_registrations():
                registration()
        else:
            self._pending.when_imported(package, registration)

    def declare_builtins(self, provider: BuiltinProvider) -> None:
        """gpd's branch kinds and rules that ``provider`` registers at their first lookup (never at import)."""
        self._pending.provider(provider)

    def run_pending_registrations(self, kind: str | None = None, *, every_kind: bool = False) -> None:
        """Run, as built-ins, the waiting registrations due now (:meth:`PendingRegistrations.take`)."""
        for registration in self._pending.take(kind, every_kind=every_kind):
            with self.builtin_registrations():
                registration()

    # -- looking up --------------------------------------------------------------------

    def get(self, module_class: type) -> RuleEntry | None:
        """The rule registered for exactly ``module_class`` (the user's, else the built-in), or None."""
        self.run_pending_registrations()
        builtin, users = self._rules
        return users.get(module_class) or builtin.get(module_class)

    def find(self, module: nn.Module) -> RuleEntry | None:
        """The rule of the nearest registered class in ``module``'s MRO."""
        self.run_pending_registrations()
        builtin, users = self._rules
        for cls in type(module).__mro__:
            entry = users.get(cls) or builtin.get(cls)
            if entry is not None:
                return entry
        return None

    def _declared(self, cls: type) -> tuple[dict[str, int], set[str]]:
        """What ``cls`` itself declares: registered, or as class attributes (so that a model
        package can declare its tensors without importing the expansion engine)."""
        axes = dict(cls.__dict__.get(CHANNEL_TENSORS_ATTRIBUTE, {}))
        multiplying = set(cls.__dict__.get(MULTIPLYING_TENSORS_ATTRIBUTE, ()))
        registered = self._tensors[1].get(cls) or self._tensors[0].get(cls)
        if registered is not None:
            axes.update(registered.axes)
            multiplying |= registered.multiplying
        return axes, multiplying

    def channel_tensor_axes(self, module: nn.Module) -> dict[str, int]:
        """The declared channel axes of ``module``'s own tensors (from every class in its MRO)."""
        self.run_pending_registrations()
        axes: dict[str, int] = {}
        for cls in reversed(type(module).__mro__):
            axes.update(self._declared(cls)[0])
        return axes

    def channel_tensor_multiplies(self, module: nn.Module, name: str) -> bool:
        """Whether the declared channel tensor ``name`` of ``module`` scales activations (else it is added)."""
        self.run_pending_registrations()
        for cls in type(module).__mro__:
            axes, multiplying = self._declared(cls)
            if name in axes:
                return name in multiplying
        return False

    def branch_kind(self, name: str) -> BranchKind | None:
        self.run_pending_registrations(name)
        builtin, users = self._branch_kinds
        return users.get(name) or builtin.get(name)

    @property
    def branch_kinds(self) -> list[str]:
        """The names ``gpd.expand(branches=...)`` accepts (besides "none")."""
        self.run_pending_registrations(every_kind=True)
        return sorted({**self._branch_kinds[0], **self._branch_kinds[1]})

    def merge_branches(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with the blocks of every branch kind merged into plain layers."""
        merged = None
        for name in self.branch_kinds:
            kind = self.branch_kind(name)
            if kind is not None:
                merged = kind.merge(model if merged is None else merged)
        return copy.deepcopy(model) if merged is None else merged


RULES = RuleSet()  # the rule set gpd.expand uses
# gpd's built-ins above the engine, by name: branch kind / class module -> the function that registers them
RULES.declare_builtins(
    BuiltinProvider(
        "gpd.branches.expansion_rule:register_branch_rules", kinds=("orepa",), modules=("gpd.branches.orepa",)
    )
)

CHANNEL_TENSORS_ATTRIBUTE = "gpd_channel_tensors"  # a model class's own declaration: {name: axis}
MULTIPLYING_TENSORS_ATTRIBUTE = "gpd_multiplying_tensors"  # the names among them that scale activations


def register_expansion_rule(
    module_class: type[M],
    rule: Callable[[M, LayerContext], ExpandedLayer],
    *,
    channelwise: bool = False,
    override: bool = False,
) -> None:
    """Register ``rule`` for ``module_class`` and its subclasses in :data:`RULES` (the nearest class wins).

    A rule registered for a container class handles all of its submodules; the
    expansion does not descend into it. Your rule replaces gpd's for the same class; a second
    rule of yours for it raises ``ValueError`` unless ``override=True``.
    """
    RULES.register(module_class, rule, channelwise=channelwise, override=override)


def register_channel_tensors(
    module_class: type[nn.Module], axes: dict[str, int], *, multiplies: bool = False, override: bool = False
) -> None:
    """Declare tensors a container holds directly (class token, position embedding, ...).

    ``axes`` maps each attribute name to its channel axis. D holds them tiled on that
    axis, not divided: they are added to or concatenated with activations, never
    summed over. ``multiplies=True`` declares tensors that scale an activation
    channel by channel instead (a layer-scale gamma): the paper's parameterisation
    holds those unchanged, while it divides added tensors by r (see ``ParamSlice.paper_scale``).
    A class of your own can declare the same as class attributes, without importing gpd:
    ``gpd_channel_tensors = {"pos_embed": -1}`` (and ``gpd_multiplying_tensors = ("gamma",)``).
    """
    RULES.register_channel_tensors(module_class, axes, multiplies=multiplies, override=override)


# the lookups and lazy registrations of RULES, as functions
channel_tensor_axes = RULES.channel_tensor_axes
channel_tensor_multiplies = RULES.channel_tensor_multiplies
find_rule = RULES.find
register_when_imported = RULES.register_when_imported
run_pending_registrations = RULES.run_pending_registrations


def replace_tensors(module: M, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor] | None = None) -> M:
    """A deep copy of ``module`` with the given parameters and buffers replaced."""
    new = copy.deepcopy(module)
    for name, value in params.items():
        old = getattr(module, name)
        setattr(new, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    for name, value in (buffers or {}).items():
        setattr(new, name, value.detach().clone())
    return new


def __getattr__(name: str) -> Any:
    """The built-in rules lived here before :mod:`gpd.expansion.torch_rules`: their old names still work."""
    from gpd.expansion import torch_rules

    if name in torch_rules.__all__:
        return getattr(torch_rules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
