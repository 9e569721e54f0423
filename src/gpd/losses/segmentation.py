"""Per-pixel losses for dense prediction: GPD's objective at every pixel of a segmentation map.

Logits are ``(N, C, *spatial)`` (``(N, C, H, W)`` for images), the class axis being dim 1;
labels are ``(N, *spatial)`` integer class indices, ``ignore_index`` (255, the Pascal VOC
and Cityscapes convention) marking unlabelled pixels. Each loss moves the class axis last
and flattens the pixels into rows, ``(N * H * W, C)``, then applies the classification
formula of :mod:`gpd.losses.soft_targets` or :mod:`gpd.losses.dkd` to every row, so a map of
one pixel, ``(N, C, 1, 1)``, gives the classification loss of ``(N, C)``. Results are
means over pixels: the batch mean of the classification losses becomes a pixel mean.

Precision: as the classification losses, half-precision logits (an autocast forward) are
upcast to float32 and float64 logits stay in float64.

Where a mean runs over labelled pixels only and a batch has none, the loss is 0, not
``0 / 0 = nan``: the masked sum (0, still a function of the logits, so ``backward`` works
and gives zero gradients) is divided by ``max(count, 1)``.

Teacher logits of another spatial size (a static teacher with another output stride) are
resized to the student's size, bilinearly for 2-D maps (``align_corners=False``, linear or
trilinear for 1-D or 3-D), after they are detached: the target is moved onto the student's
grid, never the student's prediction onto the teacher's. Batch and class counts must match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpd.errors import ArgumentError
from gpd.losses.dkd import _check_dkd_arguments, dkd_per_sample
from gpd.losses.soft_targets import _at_least_float32, kd, kd_log_probs, sce, sce_per_sample

IGNORE_INDEX = 255
"""The label of unlabelled pixels by default (Pascal VOC, Cityscapes, the folder format's masks)."""

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def check_dense_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """Refuse logits without spatial axes: a dense loss needs ``(N, C, *spatial)``."""
    if logits.dim() < 3:
        raise ArgumentError(f"{name} must be (batch, classes, *spatial), got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ArgumentError(f"{name} must be floating point, got dtype {logits.dtype}")


def teacher_on_student_grid(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``teacher`` detached, at least float32, resized to ``student``'s spatial size if it differs."""
    check_dense_logits(student, "student logits")
    check_dense_logits(teacher, "teacher logits")
    if teacher.dim() != student.dim() or teacher.shape[:2] != student.shape[:2]:
        raise ArgumentError(
            f"teacher logits {tuple(teacher.shape)} do not match the student's {tuple(student.shape)}: "
            "batch, classes and number of spatial axes must agree"
        )
    teacher = _at_least_float32(teacher.detach())
    if teacher.shape[2:] == student.shape[2:]:
        return teacher
    spatial_dims = student.dim() - 2
    if spatial_dims not in _INTERPOLATION:
        raise ArgumentError(f"cannot resize teacher logits with {spatial_dims} spatial axes to the student's size")
    size = tuple(student.shape[2:])
    return F.interpolate(teacher, size=size, mode=_INTERPOLATION[spatial_dims], align_corners=False)


def pixels_as_rows(logits: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial)`` -> ``(N * prod(spatial), C)``, rows in the order of ``labels.reshape(-1)``."""
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def labelled_pixels(
    target: torch.Tensor, logits: torch.Tensor, ignore_index: int = IGNORE_INDEX, *, check_targets: bool = True
) -> torch.Tensor:
    """Boolean ``(N, *spatial)`` mask of the pixels whose label is not ``ignore_index``.

    ``check_targets`` refuses a label that is neither a class of ``logits`` nor the ignore
    index (it reads the labels back to the host; pass False where the data were checked).
    """
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ArgumentError(
            f"target must have shape {expected} (the logits' batch and spatial size), got {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ArgumentError(f"target must hold integer class indices, got dtype {target.dtype}")
    target = target.to(logits.device)
    valid = target != ignore_index
    if check_targets:
        num_classes = logits.shape[1]
        bad = valid & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            value = int(target[bad][0])
            raise ArgumentError(
                f"target holds {value}: labels must be classes in [0, {num_classes}) or the ignore index {ignore_index}"
            )
    return valid


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``valid``; 0 (with a gradient path) where nothing is valid."""
    kept = torch.where(valid, values, values.new_zeros(()))
    return kept.sum() / valid.sum().clamp_min(1)


def pixel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """Cross-entropy ``-log softmax(z)_y`` at every labelled pixel, averaged over the labelled pixels.

    The supervised term ``CE(z, y)`` of GPD's objective (docs/method.md, "The objective") at
    every pixel, for the student and for D. Pixels labelled ``ignore_index`` add nothing and
    are not counted; a batch without a labelled pixel gives 0. ``label_smoothing`` is that of
    ``torch.nn.functional.cross_entropy``, applied to the labelled pixels.
    """
    check_dense_logits(logits)
    valid = labelled_pixels(target, logits, ignore_index, check_targets=check_targets)
    per_pixel = F.cross_entropy(
        _at_least_float32(logits),
        target.to(device=logits.device, dtype=torch.long),
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return masked_mean(per_pixel, valid)


def pixel_sce(
    student_logits: torch.Tensor,
    dynamic_logits: torch.Tensor,
    eps: float = 0.1,
    *,
    target: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """GPD's consistency term ``SCE(z_S || sg(z_D))`` at every pixel, averaged over pixels.

    Per pixel, ``-sum_c q_c log softmax(z_S)_c`` with ``q = (1 - eps) softmax(z_D) + eps / C``
    (docs/method.md, "The objective": ε = 0.1, weight λ = 3, applied by the caller);
    ``dynamic_logits`` is detached.

    Every pixel counts by default, ignored ones included: the paper's SCE takes no label (it
    is the mean over all samples of the batch, a comparison of two predictions), so a pixel
    whose label is unknown still has a student and a D prediction to make consistent.
    Passing ``target`` restricts the mean to the pixels not labelled ``ignore_index``, for
    data where 255 marks padding rather than unlabelled image content.
    """
    if not 0.0 <= eps <= 1.0:
        raise ArgumentError(f"eps must be in [0, 1], got {eps}")
    dynamic = teacher_on_student_grid(student_logits, dynamic_logits)
    rows_s, rows_d = pixels_as_rows(student_logits), pixels_as_rows(dynamic)
    if target is None:
        return sce(rows_s, rows_d, eps=eps)
    valid = labelled_pixels(target, student_logits, ignore_index, check_targets=False)
    return masked_mean(sce_per_sample(rows_s, rows_d, eps), valid.reshape(-1))


def pixel_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    target: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Hinton KD at every pixel: ``T^2 KL(softmax(z_T / T) || softmax(z_S / T))`` over classes, pixel mean.

    The default ``T = 1`` is the plain per-pixel KL of pixel-wise distillation for
    segmentation (Liu et al., "Structured Knowledge Distillation for Semantic Segmentation",
    CVPR 2019); the classification :func:`gpd.losses.kd` defaults to 4. ``teacher_logits``
    is detached. As :func:`pixel_sce`, every pixel counts unless ``target`` is passed, which
    restricts the mean to the pixels not labelled ``ignore_index``.
    """
    if temperature <= 0:
        raise ArgumentError(f"temperature must be > 0, got {temperature}")
    teacher = teacher_on_student_grid(student_logits, teacher_logits)
    rows_s, rows_t = pixels_as_rows(student_logits), pixels_as_rows(teacher)
    if target is None:
        return kd(rows_s, rows_t, temperature)
    valid = labelled_pixels(target, student_logits, ignore_index, check_targets=False)
    log_student, log_teacher = kd_log_probs(rows_s, rows_t, temperature)
    per_pixel = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=-1)
    return masked_mean(per_pixel, valid.reshape(-1)) * temperature**2


def pixel_dkd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    ignore_index: int = IGNORE_INDEX,
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022) at every labelled pixel, averaged over the labelled pixels.

    DKD splits each prediction at the sample's label, so per pixel it is exact with the
    pixel's label: the classification :func:`gpd.losses.dkd` applied to every labelled
    pixel as a row. Ignored pixels have no target class, hence no TCKD/NCKD split: they are
    left out (and a batch without a labelled pixel gives 0). The defaults are the
    classification ones (the DKD paper reports no segmentation setting).
    """
    teacher = teacher_on_student_grid(student_logits, teacher_logits)
    valid = labelled_pixels(target, student_logits, ignore_index, check_targets=check_targets)
    # Ignored pixels get class 0 so that every row is well defined; the mask drops them.
    labels = torch.where(valid, target.to(device=student_logits.device, dtype=torch.long), 0).reshape(-1)
    rows_s, rows_t = pixels_as_rows(student_logits), pixels_as_rows(teacher)
    _check_dkd_arguments(rows_s, rows_t, labels, temperature, check_targets=False)
    per_pixel = dkd_per_sample(rows_s, rows_t, labels, alpha, beta, temperature)
    return masked_mean(per_pixel, valid.reshape(-1)) * temperature**2
