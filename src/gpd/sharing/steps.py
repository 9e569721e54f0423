"""Per-layer steps: the paper's SGD step on every tensor of D, in gpd's tiled layout.

gpd's D holds every activation as r tiled copies ``[h, ..., h]``; the paper's D holds
``[h/r, ..., h/r]``. Both compute the same function, but a tensor stored ``a`` times
larger in the paper's layout (``ParamSlice.paper_scale``) receives a gradient ``1/a``
times ours there, and an SGD step in those coordinates moves our tensor ``1/a**2`` as
far as our plain step does. So the paper's training is gpd's with

* the loss gradient of each such tensor multiplied by ``1 / a**2`` (:func:`install_paper_steps`,
  a gradient hook on D's parameter, so any loop and any SGD-like optimizer get it);
* the global gradient norm for clipping measured on the paper's gradients ``a * grad``
  (:func:`clip_grad_norm_`);
* for optimizers that normalise the gradient (Adam and its kind), the learning rate of
  the tensor multiplied by ``1 / a`` and its decoupled weight decay by ``a``
  (:func:`adaptive_group_scales`), since rescaling a gradient does not change their step.

Weight decay needs no correction under SGD: ``-lr * wd * theta`` is the same step in
both coordinates. docs/method.md tabulates the factors for every kind of tensor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gpd.choices import StepRule, choices_of

STEP_RULES: tuple[str, ...] = choices_of(StepRule)  # "paper": these steps (the default); "plain": none of them


def paper_scales(slices: dict, dynamic: nn.Module) -> dict[str, float]:
    """``paper_scale`` of every parameter of D whose scale is not 1, by D's parameter name."""
    names = {name for name, _ in dynamic.named_parameters()}
    return {name: float(s.paper_scale) for name, s in slices.items() if name in names and s.paper_scale != 1.0}


def install_paper_steps(dynamic: nn.Module, scales: dict[str, float]) -> list[RemovableHandle]:
    """Multiply the gradient of each of D's tensors by ``1 / paper_scale**2`` as it arrives.

    The hook sits on the parameter itself, so it runs before autograd accumulates the
    gradient (and before DDP's reducer sees it), whatever loss produced it: D's own
    terms or the student's, which reach D's tensors through the student view.
    """
    params = dict(dynamic.named_parameters())
    handles = []
    for name, scale in scales.items():
        if not params[name].requires_grad:  # a frozen copy (an EMA, an export): nothing to step
            continue
        factor = 1.0 / (scale * scale)
        handles.append(params[name].register_hook(lambda grad, factor=factor: grad * factor))
    return handles


def _grads_by_scale(
    parameters: Iterable[torch.Tensor],
    scales: dict[torch.Tensor, float] | None,
    minus: dict[torch.Tensor, torch.Tensor] | None = None,
) -> dict[float, list[torch.Tensor]]:
    """Each parameter's gradient (less ``minus[param]`` where given), grouped by paper scale."""
    by_scale: dict[float, list[torch.Tensor]] = defaultdict(list)
    for param in parameters:
        if param.grad is not None:
            grad = param.grad - minus[param] if minus and param in minus else param.grad
            by_scale[(scales or {}).get(param, 1.0)].append(grad)
    return by_scale


def _total_norm(by_scale: dict[float, list[torch.Tensor]]) -> torch.Tensor:
    """sqrt(sum over groups of (scale * norm of the group)^2); one fused norm kernel per group."""
    if not by_scale:
        return torch.zeros(())
    norms = []
    for scale, grads in by_scale.items():
        per_tensor = [n if n.dtype in (torch.float32, torch.float64) else n.float() for n in torch._foreach_norm(grads)]
        norms.append(torch.linalg.vector_norm(torch.stack(per_tensor)) * scale)
    return torch.linalg.vector_norm(torch.stack(norms))


def clip_grad_norm_(
    parameters: Iterable[torch.Tensor], max_norm: float, scales: dict[torch.Tensor, float] | None = None
) -> torch.Tensor:
    """Clip the global gradient norm as the paper's optimizer sees it; returns that norm (before clipping).

    ``scales`` maps a parameter to its ``paper_scale`` ``a``: its gradient counts as
    ``a * grad`` in the norm (the paper's gradient of a tensor whose hook already holds
    ``grad / a**2``). Every gradient is then multiplied by the same clip coefficient,
    as :func:`torch.nn.utils.clip_grad_norm_` does; no host synchronisation.
    """
    by_scale = _grads_by_scale(parameters, scales)
    total = _total_norm(by_scale)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grads in by_scale.values():
        torch._foreach_mul_(grads, coefficient.to(grads[0].device))
    return total


def grad_norm(
    parameters: Iterable[torch.Tensor],
    scales: dict[torch.Tensor, float] | None = None,
    minus: dict[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The global gradient norm in the paper's coordinates (as :func:`clip_grad_norm_` measures it), unclipped.

    ``minus``: earlier gradients to subtract first, parameter by parameter (the norm of
    what has been accumulated since).
    """
    by_scale = _grads_by_scale(parameters, scales, minus)
    return _total_norm(by_scale)


def adaptive_group_scales(scale: float) -> tuple[float, float]:
    """``(lr_scale, weight_decay_scale)`` that give a tensor the paper's step under Adam-like optimizers.

    The paper's step of a normalised update is ``-lr * u`` in its coordinates, i.e.
    ``-lr * u / a`` in ours; decoupled weight decay ``-lr * wd * theta`` is the same in
    both, so with ``lr / a`` the decay must be ``wd * a``.
    """
    return 1.0 / scale, scale


SGD_LIKE_OPTIMIZERS: frozenset[str] = frozenset({"sgd", "nesterov", "momentum", "sgdw"})


def is_sgd_like(optimizer_name: str) -> bool:
    """Whether a timm optimizer name is plain SGD (whose step scales with the gradient)."""
    return optimizer_name.lower().split("_")[-1] in SGD_LIKE_OPTIMIZERS
