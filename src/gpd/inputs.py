"""A model's input as gpd passes it: a tensor (or a tuple of positional arguments) or a mapping.

A batch's input ``x`` is what the data give: an image tensor, passed positionally
(``model(x)``), or a mapping such as a tokenizer's ``{"input_ids": ..., "attention_mask": ...}``
or an image processor's ``{"pixel_values": ...}``, passed as keyword arguments
(``model(**x)``), as Hugging Face ``transformers`` models take it. :func:`call_model` is the
one place that makes that call; :class:`ModelInput` is the same input split into its
positional and keyword arguments, for code that runs several networks on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

import torch

Inputs: TypeAlias = "torch.Tensor | Mapping[str, Any] | tuple[Any, ...]"  # a batch's input, as models take it


class ModelInput(NamedTuple):
    """An input split into positional ``args`` and keyword ``kwargs``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def call(self, run: Callable[..., Any]) -> Any:
        """``run(*args, **kwargs)``."""
        return run(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        """Its tensors, positional ones first."""
        values = list(self.args) + list(self.kwargs.values())
        return [t for t in values if isinstance(t, torch.Tensor)]

    def map_tensors(self, change: Callable[[torch.Tensor], Any]) -> ModelInput:
        """The same input with ``change`` applied to each tensor (other values kept)."""
        apply = lambda v: change(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return ModelInput(tuple(apply(v) for v in self.args), {k: apply(v) for k, v in self.kwargs.items()})

    def map_floats(self, change: Callable[[torch.Tensor], Any]) -> ModelInput:
        """``change`` applied to the floating-point tensors only (integer ids and masks kept)."""
        return self.map_tensors(lambda t: change(t) if t.is_floating_point() else t)


def model_input(x: Any) -> ModelInput:
    """``x`` split into arguments: a :class:`ModelInput` as it is, a mapping as keyword arguments,
    a tuple as positional arguments, anything else (a tensor) as the one positional argument."""
    if isinstance(x, ModelInput):
        return x
    if isinstance(x, Mapping):
        return ModelInput((), dict(x))
    if isinstance(x, tuple):
        return ModelInput(x, {})
    return ModelInput((x,), {})


def call_model(run: Callable[..., Any], x: Any) -> Any:
    """``run(x)`` for a tensor, ``run(**x)`` for a mapping (keyword arguments), ``run(*x)`` for a tuple."""
    if isinstance(x, torch.Tensor):
        return run(x)
    return model_input(x).call(run)


def to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``x`` (a tensor, or a mapping or tuple of them) on ``device``; a mapping stays a dict."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, Mapping):
        return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for v in x)
    return x


def batch_to_device(
    x: Any, device: torch.device | str, memory_format: torch.memory_format = torch.contiguous_format
) -> Any:
    """A training batch's input on ``device``, contiguous: ``memory_format`` (channels_last) applies to
    4-D floating-point tensors (images) only, never to token ids or masks. A tensor of images takes
    the one path it always took: ``x.to(device, non_blocking=True).contiguous(memory_format=...)``."""

    def move(t: torch.Tensor) -> torch.Tensor:
        image = t.ndim == 4 and t.is_floating_point()
        layout = memory_format if image else torch.contiguous_format
        return t.to(device, non_blocking=True).contiguous(memory_format=layout)

    if isinstance(x, torch.Tensor):
        return move(x)
    if isinstance(x, Mapping):
        return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(move(v) if isinstance(v, torch.Tensor) else v for v in x)
    return x
