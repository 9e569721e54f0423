"""Which layers read the image and which write the logits.

D keeps the student's input and output shapes: the layers that read the model's
input see it unexpanded, and the layers that write the model's output produce it
unexpanded. They are found by tracing one forward pass with hooks on every *unit*
(a module that has an expansion rule, or a leaf module) and following the autograd
graph: a unit reads the image when data flows to it from the input without passing
through another unit, and writes the output when data flows from it to the output
that way; functional ops in between (indexing, ``torch.cat``, averaging two heads)
are followed. Channel-wise units (normalisation, activations, dropout, flatten) pass
that status on, so an input normalisation or a dropout after the classifier is
handled too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gpd.errors import ExpansionError, first_line
from gpd.expansion.refusals import is_bug
from gpd.expansion.rules import RuleEntry, channel_tensor_axes, find_rule
from gpd.inputs import model_input


def iter_units(model: nn.Module) -> Iterator[tuple[str, nn.Module, RuleEntry | None]]:
    """Walk ``model`` down to the modules that expansion treats as one piece.

    A module with a registered rule is a unit and is not descended into; a leaf
    without a rule is a unit too. Tensors a container holds itself (a class token, a
    layer scale) are expanded by :func:`gpd.expansion.generic.expand_own_tensors`.
    """

    def walk(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module, RuleEntry | None]]:
        entry = find_rule(module)
        children = list(module.named_children())
        if entry is not None or not children:
            yield prefix, module, entry
            return
        for name, child in children:
            yield from walk(f"{prefix}.{name}" if prefix else name, child)

    yield from walk("", model)


def iter_channel_tensor_holders(model: nn.Module) -> Iterator[tuple[str, nn.Module, dict[str, int | None]]]:
    """Containers (outside rule-handled units) with tensors of their own, and their declared axes
    (None: not declared, found by :mod:`gpd.expansion.generic`)."""
    inside_units = [name for name, _, entry in iter_units(model) if entry is not None]
    for name, module in model.named_modules():
        if any(name == unit or name.startswith(unit + ".") for unit in inside_units):
            continue  # a rule handles this module's tensors
        own = {n for n, _ in module.named_parameters(recurse=False)} | {
            n for n, _ in module.named_buffers(recurse=False)
        }
        if not own or not any(True for _ in module.children()):
            continue  # a leaf is a unit: its rule (or the generic leaf rule) handles its tensors
        declared = channel_tensor_axes(module)
        axes: dict[str, int | None] = {n: declared.get(n) for n in sorted(own)}
        if axes:
            yield name, module, axes


def is_channelwise(module: nn.Module, entry: RuleEntry | None) -> bool:
    """Whether a unit keeps its input's channel layout (parameter-free leaves are assumed to)."""
    if entry is not None:
        return entry.channelwise
    return True  # a leaf without a rule: parameter-free, or per-channel tensors only (generic leaf rule)


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
    """One call of a unit during the trace, with the autograd nodes of its tensors."""

    name: str
    channelwise: bool
    inputs: list[Any]
    outputs: list[Any]


def _nodes(obj: Any) -> list[Any]:
    return [t.grad_fn for t in tree_leaves(obj) if isinstance(t, torch.Tensor) and t.grad_fn is not None]


def _parents(node: Any) -> list[Any]:
    return [parent for parent, _ in getattr(node, "next_functions", ()) if parent is not None]


def trace_calls(model: nn.Module, example_input: Any) -> tuple[list[_Call], list[Any], list[Any]]:
    """Run ``model`` once in eval mode, recording each unit call's autograd nodes in order.

    The autograd graph links every tensor to the ones it was computed from, through
    functional ops too (``torch.cat``, indexing, ``(a + b) / 2``), so role detection
    can follow the data from the input and back from the output. The nodes are kept
    alive by the records, so their identities are stable while they are compared.
    """
    calls: list[_Call] = []
    handles = []
    pending: dict[int, list[list[Any]]] = {}  # input nodes taken before the call: an in-place op rebases them
    for name, module, entry in iter_units(model):
        channelwise = is_channelwise(module, entry)

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            pending.setdefault(id(mod), []).append(_nodes((args, kwargs)))

        def hook(
            mod: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name, cw: bool = channelwise
        ) -> None:
            stack = pending.get(id(mod))
            calls.append(_Call(name, cw, stack.pop() if stack else _nodes((args, kwargs)), _nodes(output)))

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    # a clone gives each float input its own autograd node, distinct from any parameter's
    inputs = model_input(example_input).map_floats(lambda t: t.detach().requires_grad_(True).clone())
    try:
        with torch.enable_grad():
            try:
                output = inputs.call(model)
            except Exception as err:
                if is_bug(err, below_call_site=True):
                    raise
                shapes = ", ".join(str(tuple(t.shape)) for t in inputs.tensors())
                raise ExpansionError(
                    f"the student does not run on the example input of shape {shapes}: {first_line(err)}; "
                    "pass the right example_input= or input_size=(C, H, W)"
                ) from err
    finally:
        model.train()  # modules that cache tensors drop them on train() (LeViT's biases, traced with a graph)
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls, _nodes(inputs.tensors()), _nodes(output)


def _walk(start: list[Any], step: Callable[[Any], list[Any]]) -> Iterator[Any]:
    """Visit autograd nodes once each, from ``start``; ``step(node)`` says where to go next."""
    stack, seen = list(start), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(step(node))


def _reads_plain(start: list[Any], plain: set[int], unit_outputs: set[int]) -> bool:
    """Whether data flows from a plain (unexpanded) node to ``start`` without passing through a unit."""
    step = lambda node: [] if id(node) in unit_outputs else _parents(node)  # noqa: E731
    return any(id(node) in plain for node in _walk(start, step))


def detect_roles(
    model: nn.Module,
    example_input: Any,
    input_layers: list[str] | None = None,
    output_layers: list[str] | None = None,
) -> LayerRoles:
    """Find the layers that read the input and write the output; overrides win.

    Forward from the input: a unit reads the image if data reaches it from the input
    through functional ops or channel-wise units only. Backward from the output: a
    unit writes the output if data flows from it to the output the same way. Several
    heads (``(head(x) + head_dist(x)) / 2``) are all found.
    """
    calls, inputs, outputs = trace_calls(model, example_input)
    units = {name: is_channelwise(m, e) for name, m, e in iter_units(model)}
    for given in (input_layers or []) + (output_layers or []):
        if given not in units:
            raise ExpansionError(f"'{given}' is not a layer of the model; expected one of: {', '.join(units)}")

    unexpanded: set[str] = set()
    found_inputs: set[str] = set()
    found_outputs: set[str] = set()

    plain = {id(node) for node in inputs}
    unit_outputs: set[int] = set()
    for call in calls:
        if _reads_plain(call.inputs, plain, unit_outputs):
            if call.channelwise:
                unexpanded.add(call.name)
                plain.update(id(node) for node in call.outputs)
            else:
                found_inputs.add(call.name)
        unit_outputs.update(id(node) for node in call.outputs)

    producers: dict[int, list[_Call]] = {}
    for call in calls:
        for node in call.outputs:
            producers.setdefault(id(node), []).append(call)

    def step(node: Any) -> list[Any]:
        made_by = producers.get(id(node))
        if not made_by:
            return _parents(node)
        mixing = [call for call in made_by if not call.channelwise]
        if mixing:
            found_outputs.add(mixing[-1].name)
            unexpanded.update(call.name for call in made_by if call.channelwise)
            return []
        unexpanded.update(call.name for call in made_by)
        return [n for call in made_by for n in call.inputs]

    for _ in _walk(outputs, step):
        pass

    called = list(dict.fromkeys(call.name for call in calls))
    return LayerRoles(
        input_layers=frozenset(input_layers if input_layers is not None else found_inputs),
        output_layers=frozenset(output_layers if output_layers is not None else found_outputs),
        unexpanded=frozenset(unexpanded),
        unused=frozenset(set(units) - set(called)),
        order=tuple(called),
    )
