"""A task's metrics, accumulated over batches: ``update(logits, y)`` per batch, ``compute()`` at the end.

A metric object sums counts (integers on the host), never per-batch means, so the result over
a data set does not depend on how it was cut into batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpd.distill.method import hard_labels
from gpd.errors import ArgumentError
from gpd.losses.segmentation import IGNORE_INDEX

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class Metric:
    """No metric: the base of a task's metrics (a user's task without metrics returns this)."""

    def reset(self) -> None:
        """Forget every batch seen so far."""

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Count one batch: the model's ``logits`` and the targets ``y``."""

    def compute(self) -> dict[str, float]:
        """The metrics over the batches seen since the last :meth:`reset`, by name."""
        return {}


class TopOneAccuracy(Metric):
    """``top1``: the fraction of samples whose largest logit is the label (soft targets: their argmax)."""

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
    another size than the masks are resized to them first (:func:`to_mask_size`).
    """

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


__all__ = ["Metric", "SegmentationMetrics", "TopOneAccuracy", "to_mask_size"]
