"""Which layers read the image and which write the logits.

D keeps the student's input and output shapes: the layers that read the model's
input see it unexpanded, and the layers that write the model's output produce it
unexpanded. They are found by tracing one forward pass with hooks on every *unit*
(a module that has an expansion rule, or a leaf module): a unit whose input is the
model's input reads the image; a unit whose output is the model's output writes it.
Channel-wise units (normalisation, activations, dropout, flatten) pass that status
on, so an input normalisation or a dropout after the classifier is handled too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gpd.errors import ExpansionError
from gpd.expansion.rules import RuleEntry, find_rule


def iter_units(model: nn.Module) -> Iterator[tuple[str, nn.Module, RuleEntry | None]]:
    """Walk ``model`` down to the modules that expansion treats as one piece.

    A module with a registered rule is a unit and is not descended into; a leaf
    without a rule is a unit too. A container that holds tensors of its own (a class
    token, say) needs a rule for its class.
    """

    def walk(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module, RuleEntry | None]]:
        entry = find_rule(module)
        children = list(module.named_children())
        if entry is not None or not children:
            yield prefix, module, entry
            return
        own = [n for n, _ in module.named_parameters(recurse=False)] + [
            n for n, _ in module.named_buffers(recurse=False)
        ]
        if own:
            raise ExpansionError(
                f"module '{prefix or '(root)'}' of class {type(module).__name__} holds tensors of its own "
                f"({', '.join(own)}) and has no expansion rule; register one with gpd.register_expansion_rule"
            )
        for name, child in children:
            yield from walk(f"{prefix}.{name}" if prefix else name, child)

    yield from walk("", model)


def is_channelwise(module: nn.Module, entry: RuleEntry | None) -> bool:
    """Whether a unit keeps its input's channel layout (parameter-free leaves are assumed to)."""
    if entry is not None:
        return entry.channelwise
    return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


@dataclass(frozen=True)
class LayerRoles:
    """The result of tracing: per unit name, where D keeps the student's widths."""

    input_layers: frozenset[str] = frozenset()
    output_layers: frozenset[str] = frozenset()
    unexpanded: frozenset[str] = frozenset()
    unused: frozenset[str] = frozenset()
    order: tuple[str, ...] = field(default=(), compare=False)


@dataclass
class _Call:
    name: str
    channelwise: bool
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def trace_calls(model: nn.Module, example_input: Any) -> tuple[list[_Call], list[torch.Tensor], list[torch.Tensor]]:
    """Run ``model`` once in eval mode and record each unit call's tensors in order."""
    calls: list[_Call] = []
    handles = []
    for name, module, entry in iter_units(model):
        channelwise = is_channelwise(module, entry)

        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name, cw: bool = channelwise) -> None:
            calls.append(_Call(name, cw, _tensors((args, kwargs)), _tensors(output)))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = example_input if isinstance(example_input, tuple) else (example_input,)
            try:
                output = model(*inputs)
            except Exception as err:
                shapes = ", ".join(str(tuple(t.shape)) for t in _tensors(inputs))
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ExpansionError(
                    f"the student does not run on the example input of shape {shapes}: {first}; "
                    "pass the right example_input= or input_size=(C, H, W)"
                ) from err
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls, _tensors(inputs), _tensors(output)


def detect_roles(
    model: nn.Module,
    example_input: Any,
    input_layers: list[str] | None = None,
    output_layers: list[str] | None = None,
) -> LayerRoles:
    """Find the layers that read the input and write the output; overrides win."""
    calls, inputs, outputs = trace_calls(model, example_input)
    units = {name: is_channelwise(m, e) for name, m, e in iter_units(model)}
    for given in (input_layers or []) + (output_layers or []):
        if given not in units:
            raise ExpansionError(f"'{given}' is not a layer of the model; expected one of: {', '.join(units)}")

    unexpanded: set[str] = set()
    found_inputs: set[str] = set()
    found_outputs: set[str] = set()

    plain = {id(t) for t in inputs}
    for call in calls:
        if not any(id(t) in plain for t in call.inputs):
            continue
        if call.channelwise:
            unexpanded.add(call.name)
            plain.update(id(t) for t in call.outputs)
        else:
            found_inputs.add(call.name)

    plain = {id(t) for t in outputs}
    for call in reversed(calls):
        if not any(id(t) in plain for t in call.outputs):
            continue
        if call.channelwise:
            unexpanded.add(call.name)
            plain.update(id(t) for t in call.inputs)
        else:
            found_outputs.add(call.name)

    called = list(dict.fromkeys(call.name for call in calls))
    return LayerRoles(
        input_layers=frozenset(input_layers if input_layers is not None else found_inputs),
        output_layers=frozenset(output_layers if output_layers is not None else found_outputs),
        unexpanded=frozenset(unexpanded),
        unused=frozenset(set(units) - set(called)),
        order=tuple(called),
    )
