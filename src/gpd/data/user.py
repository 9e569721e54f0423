"""A data set of your own, named by import path: ``data.name=my_data.py:build`` or ``my_pkg.data:build``.

This is how targets other than class labels and masks reach ``gpd train``: regression values,
multi-hot label vectors, anything a task of your own (``task=my_task.py:MyTask``) takes.

The builder returns a :class:`~gpd.data.bundle.DataBundle` (train and test sets of
``(input, target)`` pairs, ``num_classes`` = the model's outputs, ``in_chans``, ``input_size``,
``mean``, ``std``). It is called with the keyword arguments it accepts among :data:`ARGUMENTS`
(the ``data.*`` keys of the same names, and the run's ``train.seed``); a subset it does not take
is drawn by gpd (the first samples of a seeded permutation). The bundle's ``targets`` says what
a target is (:data:`TARGET_KINDS`): ``"label"`` (a class index, checked against ``num_classes``,
for classification), ``"mask"`` (per-pixel classes, for segmentation) or ``"values"`` (anything
else, handed to the task's loss and metric unchecked).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from gpd.data.bundle import DataBundle
from gpd.errors import DataError, GPDError, first_line

ARGUMENTS = ("root", "train_subset", "test_subset", "seed", "image_size", "augment")
TARGET_KINDS = ("label", "mask", "values")


def accepted_arguments(builder: Callable[..., Any]) -> set[str]:
    """The names of :data:`ARGUMENTS` that ``builder`` takes (all of them if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it with nothing
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return set(ARGUMENTS)
    return {p.name for p in parameters if p.name in ARGUMENTS and p.kind is not p.POSITIONAL_ONLY}


def build_user_data(name: str, **arguments: Any) -> tuple[DataBundle, set[str]]:
    """The bundle of the builder ``name`` and the argument names it took (its subsets are then its own)."""
    from gpd.models.import_path import resolve_factory  # the same import-path rules as models and tasks

    try:
        builder = resolve_factory(name, what="data set")
    except GPDError as err:
        raise DataError(first_line(err)) from None
    taken = accepted_arguments(builder) & set(arguments)
    try:
        bundle = builder(**{key: arguments[key] for key in taken})
    except GPDError:
        raise
    except Exception as err:
        raise DataError(f"data set {name!r}: the builder raised {type(err).__name__}: {first_line(err)}") from err
    if not isinstance(bundle, DataBundle):
        raise DataError(
            f"data set {name!r}: the builder returned a {type(bundle).__name__}; return a gpd.data.DataBundle"
        )
    if bundle.targets not in TARGET_KINDS:
        raise DataError(
            f"data set {name!r}: DataBundle.targets is {bundle.targets!r}; use one of {', '.join(TARGET_KINDS)}"
        )
    return bundle, taken
