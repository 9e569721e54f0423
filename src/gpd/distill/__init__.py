"""Training objectives that return their loss terms and the student's logits, the KD methods they use
and the tasks (classification, segmentation, a user's) that define their losses and metrics."""

from gpd.distill.distiller import Distiller
from gpd.distill.kd_methods import DecoupledKD, HintonKD, NoKD
from gpd.distill.method import KDMethod, KDNetworks, KDOptions, RoleNetwork
from gpd.distill.output import DistillerOutput, DynamicPart, StaticTargets, logits_of, total_loss
from gpd.distill.pair import DynamicPair, UnsharedPair
from gpd.distill.registry import KD_METHODS, kd_method_class, register_kd_method
from gpd.distill.reviewkd import ReviewKD
from gpd.distill.tasks import TASKS, ClassificationTask, Metric, SegmentationTask, Task, register_task, task_class

__all__ = [
    "KD_METHODS",
    "TASKS",
    "ClassificationTask",
    "DecoupledKD",
    "Distiller",
    "DistillerOutput",
    "DynamicPair",
    "DynamicPart",
    "HintonKD",
    "KDMethod",
    "KDNetworks",
    "KDOptions",
    "Metric",
    "NoKD",
    "ReviewKD",
    "RoleNetwork",
    "SegmentationTask",
    "StaticTargets",
    "Task",
    "UnsharedPair",
    "kd_method_class",
    "logits_of",
    "register_kd_method",
    "register_task",
    "task_class",
    "total_loss",
]
