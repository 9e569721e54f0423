"""Build D along one forward pass, measuring each layer's input layout (docs/method.md).

D starts as a copy of the student. A forward pre-hook on every layer that holds
tensors expands it just before D first calls it: the layout of its input in D is
measured against the student's input on the same example (:mod:`gpd.expansion.layout`),
the layer's rule permutes its weights to read that layout, and the expanded layer
takes the copy's place. Functional ops between layers (``torch.cat``, channel
shuffles, transposes, token-mixing MLPs) thus need no rule of their own: whatever
they do to the copies is measured where a layer reads it. Layers the pass never
reaches are expanded with the tiled layout.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gpd.channel_maps import ChannelMap, WidthPlan
from gpd.errors import ExpansionError
from gpd.expansion.generic import (
    expand_generic_leaf,
    expand_own_tensors,
    known_channel_counts,
    resize_channel_attributes,
)
from gpd.expansion.layout import MeasuredInput, measure_input
from gpd.expansion.refusals import rule_failure
from gpd.expansion.roles import LayerRoles, iter_channel_tensor_holders, iter_units
from gpd.expansion.rules import ExpandedLayer, LayerContext, RuleEntry
from gpd.inputs import ModelInput
from gpd.sharing.param_slice import ParamSlice

M = TypeVar("M", bound=nn.Module)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()), None)


def _has_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _plain_sizes(units: dict[str, nn.Module], roles: LayerRoles) -> set[int]:
    """Sizes of the unexpanded axes: the image's channels and the logits."""
    sizes: set[int] = set()
    for name in roles.input_layers:
        module = units.get(name)
        sizes.update(
            v
            for v in (getattr(module, "in_channels", None), getattr(module, "in_features", None))
            if isinstance(v, int)
        )
    for name in roles.output_layers:
        module = units.get(name)
        sizes.update(
            v
            for v in (getattr(module, "out_channels", None), getattr(module, "out_features", None))
            if isinstance(v, int)
        )
    return sizes


def cast_copy(module: M, dtype: torch.dtype) -> M:
    """A copy of ``module`` in ``dtype``, without the tensors its modules cache: a cache keeps its
    dtype through a cast (LeViT's attention biases); such modules drop it on ``train()``."""
    new = copy.deepcopy(module).to(dtype)
    modes = [m.training for m in new.modules()]
    new.train()
    for m, mode in zip(new.modules(), modes):
        m.training = mode
    return new


def _swap(target: nn.Module, new: nn.Module) -> None:
    """Make ``target`` (D's copy, already being called) become ``new`` in place, in ``target``'s mode."""
    new.train(target.training)
    target.__dict__.update(new.__dict__)


# layers whose rule reads no input layout (an embedding reads indices): expanded before D's first call, so
# that a model may read their tensors without calling them
UNMEASURED_LAYERS: tuple[type[nn.Module], ...] = (nn.Embedding,)


class DynamicBuilder:
    """Expands every layer of the student once, in D's execution order."""

    def __init__(self, student: nn.Module, plan: WidthPlan, roles: LayerRoles) -> None:
        self.student, self.plan, self.roles = student, plan, roles
        self.units = [(n, m, e) for n, m, e in iter_units(student)]
        modules = {n: m for n, m, _ in self.units}
        ruled = [(n, m) for n, m, e in self.units if e is not None]
        self.counts = frozenset(known_channel_counts(ruled, _plain_sizes(modules, roles)))
        self.slices: dict[str, ParamSlice] = {}
        self.output_maps: dict[str, ChannelMap] = {}
        self.rules_used: dict[str, list[str]] = {}
        self.built: set[str] = set()
        self.known_maps: list[ChannelMap] = []  # layouts found so far, latest first: priors for tied channels

    def context(self, name: str, entry: RuleEntry | None, measured: MeasuredInput | None) -> LayerContext:
        plain = name in self.roles.unexpanded
        return LayerContext(
            name=name,
            plan=self.plan,
            expand_input=not plain and name not in self.roles.input_layers,
            expand_output=not plain and name not in self.roles.output_layers,
            measured=measured,
            channelwise=entry.channelwise if entry is not None else True,
            known_counts=self.counts,
        )

    def expand_unit(
        self, name: str, module: nn.Module, entry: RuleEntry | None, measured: MeasuredInput | None
    ) -> ExpandedLayer:
        rule = entry.rule if entry is not None else expand_generic_leaf
        try:
            layer = rule(module, self.context(name, entry, measured))
        except ExpansionError:
            raise
        except Exception as err:  # a rule refuses with ExpansionError (ctx.error); anything else is its bug
            rule_failure(err)
            raise
        prefix = f"{name}." if name else ""
        self.slices.update({prefix + p: s for p, s in layer.params.items()})
        if layer.output_map is not None:
            self.output_maps[name] = layer.output_map
        rule_name = getattr(rule, "__name__", type(rule).__name__)
        self.rules_used.setdefault(rule_name, []).append(name)
        self.built.add(name)
        return layer

    def record_student_inputs(self, example: ModelInput, names: set[str]) -> dict[str, torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {}
        handles = []
        for name, module, _ in self.units:
            if name not in names:
                continue

            def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
                if name not in inputs:
                    tensor = _first_tensor(args, {})
                    if tensor is not None:
                        inputs[name] = tensor.detach().clone()  # a later in-place op must not change it

            handles.append(module.register_forward_pre_hook(hook))
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                example.call(self.student)
        finally:
            self.student.train(was_training)
            for handle in handles:
                handle.remove()
        return inputs

    def build(self, example: ModelInput) -> nn.Module:
        dynamic = copy.deepcopy(self.student)
        for name, module, axes in iter_channel_tensor_holders(self.student):
            target = dynamic.get_submodule(name) if name else dynamic
            prefix = f"{name}." if name else ""
            for tensor_name, param_slice in expand_own_tensors(
                module, target, name, axes, self.plan, set(self.counts)
            ).items():
                self.slices[prefix + tensor_name] = param_slice
                self.rules_used.setdefault("channel_tensors", []).append(prefix + tensor_name)
        for attr in resize_channel_attributes(dynamic, self.plan):
            self.rules_used.setdefault("channel_attributes", []).append(attr)
        pending: dict[str, tuple[nn.Module, RuleEntry | None]] = {}
        seen: set[int] = set()
        for name, module, entry in self.units:
            if _has_tensors(module) and id(module) not in seen:  # a module registered twice is expanded once
                seen.add(id(module))
                pending[name] = (module, entry)
        if "" in pending:  # the whole model is one unit: nothing to measure
            module, entry = pending.pop("")
            return self.expand_unit("", module, entry, None).module
        for name, (module, entry) in list(pending.items()):
            if isinstance(module, UNMEASURED_LAYERS):  # read without a call, too (DeBERTa's relative embeddings)
                _swap(dynamic.get_submodule(name), self.expand_unit(name, module, entry, None).module)
                del pending[name]
        student_inputs = self.record_student_inputs(example, set(pending))
        handles = []
        for name, (module, entry) in pending.items():

            def hook(
                mod: nn.Module,
                args: tuple,
                name: str = name,
                module: nn.Module = module,
                entry: RuleEntry | None = entry,
            ) -> None:
                if name in self.built:
                    return
                tensor, reference = _first_tensor(args, {}), student_inputs.get(name)
                measured = None
                if tensor is not None and reference is not None:
                    measured = measure_input(tensor, reference, self.plan, self.known_maps)
                    if measured is not None:
                        self.known_maps[:0] = [m for m in measured.maps.values() if not m.is_identity]
                _swap(mod, self.expand_unit(name, module, entry, measured).module)

            handles.append(dynamic.get_submodule(name).register_forward_pre_hook(hook))
        from gpd.expansion.expand import run_or_explain  # the same error naming as verification

        was_training = dynamic.training
        dynamic.eval()
        try:
            with torch.no_grad():
                run_or_explain("dynamic teacher", dynamic, dynamic, example)
        finally:
            dynamic.train(was_training)
            for handle in handles:
                handle.remove()
        for name, (module, entry) in pending.items():
            if name not in self.built:  # never called on the example: the tiled layout
                _swap(dynamic.get_submodule(name), self.expand_unit(name, module, entry, None).module)
        return dynamic


def parameter_aliases(module: nn.Module) -> list[list[str]]:
    """The names of every parameter held at several places (tied weights), grouped, first name first."""
    places: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        places.setdefault(id(param), []).append(name)
    return [names for names in places.values() if len(names) > 1]


def tie_like_student(student: nn.Module, dynamic: nn.Module, slices: dict[str, ParamSlice]) -> None:
    """Make D hold a tied parameter of the student as one tensor too, or refuse.

    A module called twice (ALBERT's shared layers) is expanded once and stays one module in D.
    A parameter tied at two places (an output layer tied to the input embeddings) is expanded
    by each place's rule; where those give D different tensors (the input embedding tiled, the
    output layer ``W / r`` on its input axis), no one tensor of D can be both, and D would
    silently untie them: refused, naming both places. Equal tensors are tied in D, and the
    student reads the tied tensor under its first name only (``slices``).
    """
    for names in parameter_aliases(student):
        tensors = [dynamic.get_parameter(name) for name in names]
        first = tensors[0]
        for name, tensor in zip(names[1:], tensors[1:]):
            if tensor is first:
                continue
            if tensor.shape != first.shape or not torch.equal(tensor, first):
                raise ExpansionError(
                    f"the parameter '{names[0]}' is tied to '{name}', and the dynamic teacher needs different "
                    f"tensors at the two places ({tuple(first.shape)} and {tuple(tensor.shape)}"
                    f"{', different values' if tensor.shape == first.shape else ''}): untie them before gpd.expand, "
                    "e.g. a config with tie_word_embeddings=False, or "
                    f"model.{name} = nn.Parameter(model.{names[0]}.detach().clone())"
                )
            owner, _, leaf = name.rpartition(".")
            dynamic.get_submodule(owner).register_parameter(leaf, first)
        for name in names[1:]:
            slices.pop(name, None)


FLOAT64_BUILD_LIMIT = 1e8  # D's parameters; larger Ds are built in the student's dtype (memory)


def build_dynamic(
    student: nn.Module, plan: WidthPlan, roles: LayerRoles, example: ModelInput
) -> tuple[nn.Module, dict[str, ParamSlice], dict[str, ChannelMap], dict[str, list[str]], nn.Module | None]:
    """D, the slice of every student parameter, each layer's output map, the rules used, and D in float64.

    A float32 student is built in float64 (then D is cast back; at r = 3 its ``W / 3``
    are rounded): deep float32 nets drift by more than a layout match tolerates, and a
    channel pooled to a few numbers is told apart from its neighbours only in float64.
    The float64 D is returned too (None when D was built in the student's dtype): it
    is what verification checks in float64, free of the float32 rounding of ``W / r``.
    """
    dtypes = {t.dtype for t in list(student.parameters()) + list(student.buffers()) if t.is_floating_point()}
    size = sum(p.numel() for p in student.parameters()) * plan.ratio**2
    in_float64 = dtypes == {torch.float32} and size <= FLOAT64_BUILD_LIMIT
    if in_float64:
        student = cast_copy(student, torch.float64)
        example = example.map_floats(torch.Tensor.double)
    builder = DynamicBuilder(student, plan, roles)
    dynamic = builder.build(example)
    tie_like_student(student, dynamic, builder.slices)
    dynamic64 = dynamic if in_float64 else None
    if in_float64:
        dynamic = cast_copy(dynamic, torch.float32)
    return dynamic, builder.slices, builder.output_maps, builder.rules_used, dynamic64
