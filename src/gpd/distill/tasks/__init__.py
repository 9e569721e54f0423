"""Tasks: what the student and D learn (the supervised loss, the consistency term, the KD terms
and the metrics), by name in :data:`TASKS`: ``"classification"``, ``"segmentation"`` or a
user's :class:`Task`, registered with :func:`register_task` or named by import path."""

from gpd.distill.tasks.base import Task, build_task, task_options
from gpd.distill.tasks.classification import ClassificationTask
from gpd.distill.tasks.dense_kd import ChannelWiseKD, CWDOptions, PixelDKD, PixelKD, PixelKDOptions
from gpd.distill.tasks.metrics import Metric, SegmentationMetrics, TopOneAccuracy, to_mask_size
from gpd.distill.tasks.registry import TASKS, make_task, register_task, task_class, task_kd_method_class
from gpd.distill.tasks.segmentation import SegmentationTask

__all__ = [
    "TASKS",
    "CWDOptions",
    "ChannelWiseKD",
    "ClassificationTask",
    "Metric",
    "PixelDKD",
    "PixelKD",
    "PixelKDOptions",
    "SegmentationMetrics",
    "SegmentationTask",
    "Task",
    "TopOneAccuracy",
    "build_task",
    "make_task",
    "register_task",
    "task_class",
    "task_kd_method_class",
    "task_options",
    "to_mask_size",
]
