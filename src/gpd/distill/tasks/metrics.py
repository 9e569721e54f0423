"""A task's metrics, accumulated over batches: ``update(logits, y)`` per batch, ``compute()`` at the end.

A metric object sums counts (integers on the host), never per-batch means, so the result over
a data set does not depend on how it was cut into batches, nor on how many processes shared it:
the attributes named in :attr:`Metric.summed` are the counts that processes add up under
torchrun (:func:`merge_states`) before ``compute()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from gpd.distill.method import hard_labels
from gpd.errors import ArgumentError
from gpd.losses.segmentation import IGNORE_INDEX

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class Metric:
    """No metric: the base of a task's metrics (a user's task without metrics returns this).

    ``summed``: the names of the attributes that hold counts or sums (ints, floats or tensors; None
    before the first batch): under torchrun each process counts its own share of the data and gpd
    adds these up over the processes before :meth:`compute`. A metric that is no sum of counts
    (a median, say) leaves ``summed`` empty, or overrides :meth:`state` and :meth:`load_state`;
    left empty, a run of several processes warns that the metric covers one process's share only.
    """

    summed: ClassVar[tuple[str, ...]] = ()

    def state(self) -> dict[str, Any] | None:
        """What processes add up: the ``summed`` attributes by name, or None where this metric
        cannot be merged (no ``summed``)."""
        return {name: getattr(self, name) for name in self.summed} if self.summed else None

    def load_state(self, state: dict[str, Any]) -> None:
        """Take the merged counts (:func:`merge_states` of every process's :meth:`state`)."""
        for name, value in state.items():
            setattr(self, name, value)

    def reset(self) -> None:
        """Forget every batch seen so far."""

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Count one batch: the model's ``logits`` and the targets ``y``."""

    def compute(self) -> dict[str, float]:
        """The metrics over the batches seen since the last :meth:`reset`, by name, as fractions (gpd's
        metrics.csv, logs and reports show them in percent: 100 x the value)."""
        return {}


class TopOneAccuracy(Metric):
    """``top1``: the fraction of samples whose largest logit is the label (soft targets: their argmax)."""

    summed = ("correct", "total")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct, self.total = 0, 0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        labels = hard_labels(y).to(logits.device)
        self.correct += int((logits.argmax(dim=1) == labels).sum())
        self.total += int(labels.numel())

    def compute(self) -> dict[str, float]:
        return {"top1": self.correct / self.total if self.total else float("nan")}


def to_mask_size(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` ``(N, C, *spatial)`` resized to the spatial size of ``mask`` ``(N, *spatial)`` if it
    differs: bilinear for 2-D maps (``align_corners=False``), linear or trilinear for 1-D or 3-D."""
    size = tuple(mask.shape[1:])
    if tuple(logits.shape[2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode=_INTERPOLATION[len(size)], align_corners=False)


class SegmentationMetrics(Metric):
    """``miou`` and ``pixel_acc`` from a confusion matrix over the labelled pixels.

    The IoU of class ``c`` is ``TP / (TP + FP + FN)``; ``miou`` is its mean over the classes
    that occur, in the labels or the predictions (a class absent from both has no IoU and is
    left out, as in mmsegmentation's ``nanmean``). ``pixel_acc`` is the fraction of labelled
    pixels predicted right. Pixels labelled ``ignore_index`` count for neither. Logits of
    another size than the masks are resized to them first (:func:`to_mask_size`). Processes add
    up their confusion matrices (``summed``).
    """

    summed = ("confusion",)

    def __init__(self, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion: torch.Tensor | None = None  # (true class, predicted class) -> pixel count

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        classes = self.num_classes or logits.shape[1]
        predicted = to_mask_size(logits.detach(), y).argmax(dim=1).cpu()
        labels = y.cpu().long()
        valid = labels != self.ignore_index
        bad = valid & ((labels < 0) | (labels >= classes))
        if bool(bad.any()):
            raise ArgumentError(
                f"mask holds {int(labels[bad][0])}: labels must be classes in [0, {classes}) "
                f"or the ignore index {self.ignore_index}"
            )
        pairs = labels[valid] * classes + predicted[valid]
        counts = torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def compute(self) -> dict[str, float]:
        if self.confusion is None or int(self.confusion.sum()) == 0:
            return {"miou": float("nan"), "pixel_acc": float("nan")}
        confusion = self.confusion.double()
        hits = confusion.diagonal()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - hits
        present = union > 0
        return {
            "miou": float((hits[present] / union[present]).mean()),
            "pixel_acc": float(hits.sum() / confusion.sum()),
        }


def merge_states(states: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """The sum of several processes' :meth:`Metric.state`, name by name; a None value (nothing
    counted yet on that process) adds nothing. Tensors are summed on the host."""
    merged: dict[str, Any] = {}
    for state in states:
        for name, value in (state or {}).items():
            if isinstance(value, torch.Tensor):
                value = value.cpu()
            if value is None:
                merged.setdefault(name, None)
            elif merged.get(name) is None:
                merged[name] = value
            else:
                merged[name] = merged[name] + value
    return merged


__all__ = ["Metric", "SegmentationMetrics", "TopOneAccuracy", "merge_states", "to_mask_size"]
