"""Swap a model's 3x3 convolutions for six-branch blocks and back (CBR's two directions).

:func:`add_branches` replaces every convolution that :func:`is_branchable` accepts by an
:class:`~gpd.branches.orepa.OREPAConv2d` under the same attribute name;
:func:`merge_branches` replaces every block by its merged convolution, which gives back
the original module classes and state_dict keys (``layer1.0.conv1.weight`` is a Conv2d
weight again), so a student trained with branches exports as a plain model. Both work
on deep copies and leave their argument unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from gpd.branches.orepa import BranchInit, OREPAConv2d, _pair, check_convertible
from gpd.errors import ModelError


def is_branchable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a convolution the branches replace exactly and as the authors did.

    A 3x3, stride-1, padding-1, dilation-1, zero-padded, non-transposed nn.Conv2d (or a
    subclass keeping Conv2d's forward), grouped or not. Padding 1 and dilation 1 are
    required because only there is branch 1's average pooling the 3x3 average kernel
    (the GPD paper's blocks replace "3x3, stride-1, padding-1" convolutions).
    """
    try:
        check_convertible(conv)
    except ModelError:
        return False
    conv = cast(nn.Conv2d, conv)  # check_convertible accepts only an nn.Conv2d
    padding = conv.padding
    same = padding == "same" or (not isinstance(padding, str) and _pair(padding) == (1, 1))
    return same and _pair(conv.dilation) == (1, 1)


def _replace_modules(
    model: nn.Module, pick: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]
) -> nn.Module:
    """A deep copy of ``model`` in which every module picked is replaced by ``make(module)``.

    Replacements are memoised by identity, so a module reachable under two names
    becomes one shared replacement, as it was one shared module.
    """
    model = copy.deepcopy(model)
    if pick(model):
        return make(model)
    made: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if pick(child):
                if id(child) not in made:
                    made[id(child)] = make(child)
                setattr(parent, name, made[id(child)])
    return model


def add_branches(
    model: nn.Module, init: BranchInit = "default", *, generator: torch.Generator | None = None
) -> nn.Module:
    """A deep copy of ``model`` with every branchable conv replaced by ``OREPAConv2d.from_conv(conv, init)``.

    ``init="identity"`` keeps the model's function exactly (fine-tuning a pretrained
    student); ``"default"`` uses the authors' branch scales for training from scratch.
    """
    return _replace_modules(
        model,
        is_branchable,
        lambda conv: OREPAConv2d.from_conv(cast(nn.Conv2d, conv), init, generator=generator),  # is_branchable
    )


def merge_branches(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every OREPAConv2d merged back into a plain convolution.

    This merges OREPA's blocks only: it is the ``merge`` of the branch kind "orepa". Exports merge
    through :meth:`gpd.expansion.RuleSet.merge_branches` (``RULES.merge_branches(model)``), which
    applies the merge of every registered branch kind, a user's included.
    """
    return _replace_modules(
        model,
        lambda module: isinstance(module, OREPAConv2d),
        lambda block: cast(OREPAConv2d, block).to_conv(),
    )


def count_branch_blocks(model: nn.Module) -> int:
    """How many OREPAConv2d blocks ``model`` holds (a shared block counts once)."""
    return sum(isinstance(module, OREPAConv2d) for module in model.modules())
