"""The interface of a task: what the student and its dynamic teacher D are trained to predict.

A :class:`Task` owns the parts of GPD's objective (docs/method.md, "The objective") that depend
on the kind of output, so that the Distiller itself only runs the networks and names the terms:

* :meth:`Task.logits`: a model's output -> its logits (through :func:`gpd.outputs.logits_of`
  and the Distiller's ``logits_fn``), with the check that the logits have the task's shape;
* :meth:`Task.supervised_losses`: the supervised terms of a role (``ce_student``, ``ce_dynamic``);
* :meth:`Task.consistency`: the term between the student and ``sg(D)`` (SCE), unweighted;
* :meth:`Task.kd_method`: the KD method against a static teacher, in the task's version
  (``kd_methods``: a task's own class by name, e.g. per-pixel KD for segmentation;
  ``refused_kd``: the names a task refuses, with their one-line reason);
* :meth:`Task.metric`: a :class:`~gpd.distill.tasks.metrics.Metric` for evaluation.

Following mdistiller's contract, the Distiller returns the terms as a dict and the loop sums
them. The weights stay the Distiller's: ``ce_weight`` (the KD method's) multiplies each
supervised term, ``sce_weight`` the consistency term.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from gpd.distill.kd_methods import KDLoss
from gpd.distill.method import KDMethod, TapRole
from gpd.distill.registry import KD_METHODS, build_kd_method
from gpd.distill.tasks.metrics import Metric
from gpd.errors import ArgumentError
from gpd.outputs import LogitsFn, logits_of

KDArgument = str | KDMethod | type[KDMethod] | KDLoss  # what Distiller(kd=...) takes


class Task:
    """What the student and D learn: subclass it and override :meth:`supervised_loss` and
    :meth:`consistency` (and :meth:`metric`, :meth:`check_logits` as needed).

    Class attributes: ``name`` (its ``task=`` value), ``title`` (for messages), ``loss_name``
    and ``consistency_name`` (the keys of its terms: ``<loss_name>_<role>`` and
    ``consistency_name``), ``kd_methods`` (KD method classes that replace the classification
    method of that name for this task) and ``refused_kd`` (KD method name -> reason).
    The keyword arguments of ``__init__`` are the task's options (``task_options=``).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    loss_name: ClassVar[str] = "ce"
    consistency_name: ClassVar[str] = "sce"
    kd_methods: ClassVar[Mapping[str, type[KDMethod]]] = {}
    refused_kd: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def display_name(cls) -> str:
        return cls.title or cls.name or cls.__name__

    def logits(self, output: Any, logits_fn: LogitsFn | None = None) -> torch.Tensor:
        """The logits of a model's ``output``, checked by :meth:`check_logits`."""
        logits = logits_of(output, logits_fn)
        self.check_logits(logits)
        return logits

    def check_logits(self, logits: torch.Tensor) -> None:
        """Refuse logits of a shape the task cannot use (one line naming the fix); any shape here."""

    def supervised_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The supervised loss of ``logits`` against the targets ``y`` (the CE terms of GPD)."""
        raise NotImplementedError(f"{type(self).__name__} must define supervised_loss(logits, y)")

    def supervised_losses(
        self, role: TapRole, output: Any, logits: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The supervised terms of ``role`` ("student" or "dynamic"): ``{"<loss_name>_<role>": loss}``;
        ``output`` is the model's whole output, for tasks with auxiliary heads."""
        return {f"{self.loss_name}_{role}": self.supervised_loss(logits, y)}

    def consistency(self, student_logits: torch.Tensor, dynamic_logits: torch.Tensor, eps: float) -> torch.Tensor:
        """The unweighted consistency term between the student and D's detached logits
        (``eps``: the Distiller's ``sce_eps``, for SCE-like terms)."""
        raise NotImplementedError(f"{type(self).__name__} must define consistency(student_logits, dynamic_logits, eps)")

    def metric(self) -> Metric:
        """A fresh metric object for evaluation; none here."""
        return Metric()

    def kd_method(self, kd: KDArgument, options: Mapping[str, Any] | None = None) -> KDMethod:
        """The KD method ``Distiller(kd=..., kd_options=...)`` asks for, in this task's version: a
        name in ``refused_kd`` is refused; a name in ``kd_methods`` (or gpd's classification method
        of that name, given as a class or object) gives the task's class; anything else is built
        as for classification (:func:`~gpd.distill.registry.build_kd_method`)."""
        name = kd if isinstance(kd, str) else getattr(kd, "name", "")
        if name in self.refused_kd:
            raise ArgumentError(self.refused_kd[name])
        own = self.kd_methods.get(name) if name else None
        if own is not None and isinstance(kd, str):
            return own.from_options(options)
        method = build_kd_method(kd, options)
        if own is not None and type(method) is KD_METHODS.builtin(name):
            return own.from_options(dataclasses.asdict(method.options))
        return method


def task_options(cls: type[Task]) -> list[str]:
    """The option names of a task class: the keyword arguments of its ``__init__``."""
    if cls.__init__ is object.__init__:
        return []
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build_task(cls: type[Task], options: Mapping[str, Any] | None = None) -> Task:
    """``cls(**options)``; an option the task does not take is refused in one line."""
    given = dict(options or {})
    known = task_options(cls)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ArgumentError(f"unknown {cls.display_name()} task options {unknown}; use {', '.join(known) or 'none'}")
    return cls(**given)


__all__ = ["KDArgument", "Task", "build_task", "task_options"]
