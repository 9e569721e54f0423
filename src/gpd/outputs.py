"""A model's output as gpd reads it: :func:`logits_of` is the one place where an output (a tensor,
a transformers ``ModelOutput``, a dict, a tuple) becomes logits.

It sits in the lowest layer, beside :mod:`gpd.inputs`, so that every reader of a model's output
uses it: the Distiller and the KD methods, evaluation, the timm task, and the exports (gpd.io).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gpd.errors import ArgumentError

LogitsFn = Callable[[Any], torch.Tensor]  # a model's output -> its logits, for outputs logits_of does not read


def logits_of(output: Any, logits_fn: LogitsFn | None = None) -> torch.Tensor:
    """The logits in a model's ``output``: ``logits_fn(output)`` when given; else a tensor as it is,
    the tensor attribute ``logits`` (transformers' ``ModelOutput``), a mapping's ``"logits"``, or the
    first element of a tuple or list. Anything else is an :class:`~gpd.errors.ArgumentError`."""
    if logits_fn is not None:
        return logits_fn(output)
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ArgumentError(
        f"cannot find the logits in a model output of type {type(output).__name__}: "
        "pass logits_fn= (a function from the model's output to its logits tensor)"
    )
