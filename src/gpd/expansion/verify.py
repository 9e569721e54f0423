"""Numerical verification: D and the student view compute the student's function.

On failure, the first unit (in execution order) whose output no longer matches the
original student's is named: D's activation is read at the student's channels
(its first copy on every expanded axis) and compared with the student's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gpd.channel_maps import ChannelMap, WidthPlan
from gpd.expansion.roles import iter_units
from gpd.inputs import ModelInput


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output, in order: a tensor, the values of a mapping (a
    transformers ``ModelOutput`` is one: ``logits``, ``hidden_states``, ...), the items of a
    tuple or list, nested; other containers as torch's pytree flattens them."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        values: list[Any] = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = [leaf for leaf in tree_leaves(output) if leaf is not output]
    return [t for value in values for t in output_tensors(value)]


def relative_error(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max |expected| over all tensors of two outputs (:func:`output_tensors`).

    Returns ``inf`` when the outputs differ in structure or shape, hold no tensor to compare, or
    differ in where they are not finite: a NaN never counts as equal (NaN compares false, so a
    plain maximum would read two NaN outputs as identical).
    """
    a_leaves, e_leaves = output_tensors(actual), output_tensors(expected)
    if len(a_leaves) != len(e_leaves) or not e_leaves:
        return float("inf")
    worst = 0.0
    for a, e in zip(a_leaves, e_leaves):
        if a.shape != e.shape:
            return float("inf")
        a, e = a.detach().double(), e.detach().double()
        finite = torch.isfinite(e)
        if not bool(finite.all()):
            if bool(e.isnan().any()) or not bool(torch.equal(a[~finite], e[~finite])):
                return float("inf")
            a, e = a[finite], e[finite]
        if not bool(torch.isfinite(a).all()):
            return float("inf")
        scale = e.abs().max().clamp_min(1e-12) if e.numel() else torch.tensor(1.0)
        worst = max(worst, float((a - e).abs().max() / scale) if e.numel() else 0.0)
    return worst


def read_student_channels(
    tensor: torch.Tensor, shape: torch.Size, channel_map: ChannelMap | None, plan: WidthPlan | None = None
) -> torch.Tensor | None:
    """D's activation restricted to the student's channels, or None if shapes do not relate.

    An axis without a known map is read in the plan's layout (the prefix without a plan)."""
    for dim, (big, small) in enumerate(zip(tensor.shape, shape)):
        if big == small:
            continue
        fallback = plan.map(small) if plan is not None else None
        if channel_map is not None and channel_map.dynamic_size == big and channel_map.student_size == small:
            tensor = channel_map.select(tensor, dim)
        elif fallback is not None and fallback.dynamic_size == big:
            tensor = fallback.select(tensor, dim)
        elif big > small:
            tensor = tensor.narrow(dim, 0, small)
        else:
            return None
    return tensor if tensor.shape == shape else None


@contextmanager
def _record_first_outputs(model: nn.Module, store: dict[str, torch.Tensor]):
    handles = []
    for name, module, _ in iter_units(model):

        def hook(mod: nn.Module, args: Any, output: Any, name: str = name) -> None:
            if name not in store:
                leaves = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
                if leaves:
                    store[name] = leaves[0].detach()

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Divergence:
    """The first layer whose output differs, and by how much."""

    layer: str
    layer_class: str
    error: float

    def describe(self) -> str:
        what = "a shape mismatch" if self.error == float("inf") else f"relative error {self.error:.2e}"
        return f"first at layer '{self.layer}' ({self.layer_class}): {what}"


def locate_divergence(
    reference: nn.Module,
    other_modules: nn.Module,
    run_other: Callable[[], Any],
    example: ModelInput,
    output_maps: dict[str, ChannelMap],
    tolerance: float,
    plan: WidthPlan | None = None,
) -> Divergence | None:
    """Run both models with hooks and return the first unit whose output differs."""
    expected: dict[str, torch.Tensor] = {}
    actual: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        with _record_first_outputs(reference, expected):
            example.call(reference)
        with _record_first_outputs(other_modules, actual):
            run_other()
    classes = {name: type(module).__name__ for name, module, _ in iter_units(reference)}
    for name, exp in expected.items():
        if name not in actual:
            continue
        got = read_student_channels(actual[name], exp.shape, output_maps.get(name), plan)
        error = float("inf") if got is None else relative_error(got, exp)
        if error > tolerance:
            return Divergence(name, classes.get(name, "?"), error)
    return None
