"""The student as a view of the dynamic teacher's parameters (hard sharing).

D's parameters are the only trainable ones. The student keeps its own module (its
exact class and sizes) and its own buffers (BatchNorm running statistics are not
shared), but its parameter slots are emptied: each forward pass reads the student's
parameters out of D's with :class:`~gpd.expansion.rules.ParamSlice` and runs the
student's module on them with ``torch.func.functional_call``. Gradients of the
student's loss therefore land on D's tensors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from gpd.choices import StepRule, check_choice
from gpd.deprecated import COMPENSATE_STEP_RULES, renamed_value, renamed_value_kwargs, warn_renamed
from gpd.errors import ArgumentError
from gpd.sharing.cache import VersionedCache
from gpd.sharing.param_slice import ParamSlice


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


class StudentView(nn.Module):
    """The student's module with its parameters derived from D on every call.

    ``module`` holds the student's buffers and structure but no parameters, so the
    student adds nothing to ``parameters()`` of the model that owns it.
    """

    @renamed_value_kwargs("compensate_step", "step_rule", COMPENSATE_STEP_RULES)
    def __init__(self, student: nn.Module, slices: dict[str, ParamSlice], step_rule: StepRule = "paper") -> None:
        super().__init__()
        if isinstance(step_rule, bool):  # the old boolean, given by position
            step_rule = renamed_value("StudentView", "compensate_step", "step_rule", step_rule, COMPENSATE_STEP_RULES)
        # see ParamSlice.derive: "plain" removes the r² step on divided weights
        self.step_rule: StepRule = check_choice("step_rule", step_rule, StepRule, error=ValueError)
        names = [name for name, _ in student.named_parameters()]
        missing = [name for name in names if name not in slices]
        if missing:
            raise ArgumentError(f"no ParamSlice for student parameters: {missing}")
        self.slices = slices
        self.requires_grad = {name: p.requires_grad for name, p in student.named_parameters()}
        self.module = copy.deepcopy(student)
        # a parameter tied at several places (remove_duplicate=False): read at each under its first name
        first_names = {id(p): name for name, p in student.named_parameters()}
        self.aliases = {
            name: first_names[id(p)]
            for name, p in student.named_parameters(remove_duplicate=False)
            if first_names[id(p)] != name
        }
        for name in [*names, *self.aliases]:
            owner, leaf = _owner(self.module, name)
            del owner._parameters[leaf]

    def derive(self, dynamic_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's parameters, read out of D's (differentiable)."""
        return {name: s.derive(dynamic_params[name], self.step_rule) for name, s in self.slices.items()}

    def forward(self, dynamic_params: dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        params = self._parameters_for(dynamic_params)
        aliases: dict[str, str] = self.__dict__.get("aliases", {})  # none in a view pickled before ties
        if aliases:
            params = {**params, **{alias: params[name] for alias, name in aliases.items()}}
        return functional_call(self.module, params, args, kwargs, strict=False)

    def _parameters_for(self, dynamic_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Derived anew under autograd; without it the same tensors while none of D's changes, so
        the student's merged branch kernels stay cached in evaluation (gpd.sharing.cache)."""
        if torch.is_grad_enabled():
            self.__dict__.pop("_derived", None)
            return self.derive(dynamic_params)
        cache = self.__dict__.setdefault("_derived", VersionedCache())
        tensors = [dynamic_params[name] for name in self.slices]
        extra = (torch.is_inference_mode_enabled(), self.step_rule)
        derived = cache.get(tensors, extra)
        return derived if derived is not None else cache.put(tensors, self.derive(dynamic_params), extra)

    def materialize(self, dynamic_params: dict[str, torch.Tensor]) -> nn.Module:
        """A standalone copy of the student with the derived parameters filled in."""
        with torch.no_grad():
            values = self.derive(dynamic_params)
        module = copy.deepcopy(self.module)
        for name, requires_grad in self.requires_grad.items():  # the student's own order
            owner, leaf = _owner(module, name)
            owner.register_parameter(leaf, nn.Parameter(values[name].detach().clone(), requires_grad=requires_grad))
        for alias, name in self.__dict__.get("aliases", {}).items():  # tied again, as in the student
            owner, leaf = _owner(module, alias)
            owner.register_parameter(leaf, module.get_parameter(name))
        return module

    @property
    def compensate_step(self) -> bool:
        """Deprecated: the old boolean of ``step_rule`` (True: "plain")."""
        warn_renamed("StudentView.compensate_step", "StudentView.step_rule")
        return self.step_rule == "plain"

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A view pickled before ``step_rule`` holds the old boolean ``compensate_step``: read as its rule."""
        if "compensate_step" in state and "step_rule" not in state:
            state = {**state, "step_rule": COMPENSATE_STEP_RULES[bool(state["compensate_step"])]}
            del state["compensate_step"]
        super().__setstate__(state)
