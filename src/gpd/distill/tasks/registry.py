"""The tasks by name, as :mod:`gpd.distill.registry` has the KD methods: ``task=`` names a task of
:data:`TASKS` or gives an import path ``package.module:ClassName`` or ``path/to/file.py:ClassName``;
users add theirs with :func:`register_task` (same policy: :class:`~gpd.distill.class_registry.ClassRegistry`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpd.distill.class_registry import ClassRegistry
from gpd.distill.method import KDMethod
from gpd.distill.registry import KD_METHODS
from gpd.distill.tasks.base import Task, build_task, task_options
from gpd.distill.tasks.classification import ClassificationTask
from gpd.distill.tasks.segmentation import SegmentationTask
from gpd.errors import ArgumentError

TASKS: ClassRegistry[Task] = ClassRegistry((ClassificationTask, SegmentationTask), Task, "task", "gpd.Task")


def register_task(name: str, cls: type[Task], *, override: bool = False) -> None:
    """Offer a task of your own as ``Distiller(task=name)``: a :class:`~gpd.Task` subclass."""
    TASKS.register(name, cls, override=override)


def task_class(name: str, key: str = "task", error: type[Exception] = ArgumentError) -> type[Task]:
    """The task class called ``name`` (a registered name or an import path); any other name is refused."""
    return TASKS.lookup(name, key, error)


def task_kd_method_class(
    kd: str, task: str = "classification", key: str = "kd", error: type[Exception] = ArgumentError
) -> type[KDMethod]:
    """The KD method class ``kd`` names for the task ``task``: a method of :data:`KD_METHODS` (or an
    import path) as for classification; else a name only the task offers (``cwd`` of segmentation)."""
    if kd not in KD_METHODS and ":" not in kd:
        cls = task_class(task, "task", error)
        if kd in cls.refused_kd:
            raise error(f"{key}: {cls.refused_kd[kd]}")
        own = cls.kd_methods.get(kd)
        if own is not None:
            return own
    return KD_METHODS.lookup(kd, key, error)


def make_task(
    task: str | Task | type[Task], options: Mapping[str, Any] | None = None, label_smoothing: float = 0.0
) -> Task:
    """The task ``Distiller(task=..., task_options=..., label_smoothing=...)`` asks for: a name (or
    import path) or a class with its options, or a task object as it is. The Distiller's
    ``label_smoothing`` becomes the task's option of that name, unless ``task_options`` give one."""
    if isinstance(task, Task):
        if options:
            raise ArgumentError(f"task_options go with a task name; {type(task).__name__} has its options already")
        if label_smoothing and getattr(task, "label_smoothing", None) != label_smoothing:
            raise ArgumentError(
                f"label_smoothing={label_smoothing} goes to the task object: give it to {type(task).__name__}"
            )
        return task
    if isinstance(task, str):
        cls = task_class(task)
    elif isinstance(task, type) and issubclass(task, Task):
        cls = task
    else:
        raise ArgumentError(f"task must be a name, a gpd.Task subclass or object, got {task!r}")
    given = dict(options or {})
    if "label_smoothing" in task_options(cls):
        given.setdefault("label_smoothing", label_smoothing)
    elif label_smoothing:
        raise ArgumentError(f"the {cls.display_name()} task takes no label_smoothing, got {label_smoothing}")
    return build_task(cls, given)


__all__ = ["TASKS", "make_task", "register_task", "task_class", "task_kd_method_class"]
