"""Optimizer parameter groups with the student's weight-decay rules, for D, the student and heads."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatch
from typing import Any

from torch import nn

from gpd.distill.pair import UnsharedPair
from gpd.expansion.model import GPDModel
from gpd.sharing.steps import adaptive_group_scales


def parameter_owners(
    pair: GPDModel | UnsharedPair | None, network: nn.Module, rest: nn.Module
) -> list[tuple[nn.Module, dict[str, float]]]:
    """The modules whose parameters a Distiller's groups list, in order, each with its paper scales:
    D (with its scales) and an unshared student, or the baseline's ``network``; then ``rest`` (the
    Distiller: fusion heads), whose parameters not listed before come last."""
    owners: list[tuple[nn.Module, dict[str, float]]] = []
    if pair is not None:
        owners.append((pair.dynamic, pair.paper_scales))
        if isinstance(pair, UnsharedPair):
            owners.append((pair.student, {}))
    else:
        owners.append((network, {}))
    owners.append((rest, {}))
    return owners


def no_weight_decay_names(student: nn.Module) -> set[str]:
    """The student's ``no_weight_decay()`` names (timm's convention), or none."""
    names = getattr(student, "no_weight_decay", None)
    return set(names()) if callable(names) else set()


def decay_groups(
    owners: Iterable[tuple[nn.Module, dict[str, float]]],
    exempt: set[str],
    weight_decay: float,
    *,
    adaptive: bool,
    decay_norms_and_biases: bool = False,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``owners`` (each module with its tensors' paper scales), grouped
    by weight decay (and ``lr_scale`` when ``adaptive``); a parameter is counted once, under its
    first owner.

    No decay for a name matching ``exempt`` (the student's ``no_weight_decay()``) and, by
    default (timm's rule), for one dimension or fewer and a name ending in ``.bias``.
    ``decay_norms_and_biases=True`` decays those too, as the paper's CNN recipes do (the
    authors' optimizer and torchvision's classification reference decay every tensor).
    ``adaptive=True`` (Adam-like optimizers) adds ``lr_scale`` and scales the decay of the
    tensors that the paper's parameterisation stores differently (see :mod:`gpd.sharing.steps`).
    """
    seen: set[int] = set()
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for module, scales in owners:
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            timm_rule = not decay_norms_and_biases and (param.ndim <= 1 or name.endswith(".bias"))
            no_decay = timm_rule or any(fnmatch(name, p) for p in exempt)
            decay = 0.0 if no_decay else weight_decay
            lr_scale = 1.0
            if adaptive and name in scales:
                lr_scale, decay_scale = adaptive_group_scales(scales[name])
                decay *= decay_scale
            groups.setdefault((decay, lr_scale), []).append(param)
    return [  # no-decay group first, as timm orders them (so older checkpoints' optimizer states load)
        {"params": groups[key], "weight_decay": key[0], **({"lr_scale": key[1]} if adaptive else {})}
        for key in sorted(groups)
    ]
