"""Decoupled Knowledge Distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

With ``p = softmax(z / T)`` for the student and the teacher and ``t`` the target class:

- the binary distribution ``b = (p_t, 1 - p_t)`` gives ``TCKD = KL(b_teacher || b_student)``;
- the distribution over the ``K - 1`` non-target classes,
  ``p_hat_i = exp(z_i / T) / sum_{j != t} exp(z_j / T)`` for ``i != t``, gives
  ``NCKD = KL(p_hat_teacher || p_hat_student)``;
- the loss is ``T^2 * (alpha * TCKD + beta * NCKD)``, averaged over the batch.

The paper's decomposition of classical KD is ``KL(p_T || p_S) = TCKD + (1 - p_T,t) * NCKD``.

Numerics: every log-probability is a difference of log-sum-exps of the scaled logits, so
no probability is ever formed and then logged, and no masking constant is needed:

- ``L = logsumexp_j(z_j / T)`` over all classes and ``N = logsumexp_{j != t}(z_j / T)``
  over the non-target classes (the target entry is set to ``-inf`` before the
  logsumexp, which ``torch.logsumexp`` handles exactly: ``exp(-inf) = 0``, and since
  K >= 2 at least one entry is finite);
- ``log p_t = z_t / T - L``, ``log(1 - p_t) = N - L`` (no cancellation when p_t -> 1,
  unlike ``log1p(-p_t)``);
- ``log p_hat_i = z_i / T - N`` for ``i != t``. The target entry of this vector is set to
  0 for both distributions (``masked_fill``, which also blocks its gradient), so it adds
  ``exp(0) * (0 - 0) = 0`` to the NCKD sum. (Leaving ``z_t / T - N`` there and multiplying
  by a 0/1 mask is not safe: for a confident teacher ``exp(z_t / T - N)`` overflows to
  ``inf`` and ``0 * inf = nan``.) No ``inf`` or ``nan`` appears in the forward or
  backward pass.

A large finite mask (``z_t - 1000``) would also work, but it silently depends on the
logit scale and on ``T``; the ``-inf``-inside-logsumexp form is exact.

The teacher logits are detached: no gradient flows into them.
"""

from __future__ import annotations

import torch

from gpd.errors import ArgumentError


def _binary_and_nontarget_log_probs(
    logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p_t, log(1 - p_t), log p_hat) for ``softmax(logits / T)``; shapes (N,), (N,), (N, K)."""
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    target_mask = torch.zeros_like(scaled, dtype=torch.bool).scatter_(1, target.unsqueeze(1), True)
    log_all = torch.logsumexp(scaled, dim=1)
    log_nontarget = torch.logsumexp(scaled.masked_fill(target_mask, float("-inf")), dim=1)
    log_p_target = scaled.gather(1, target.unsqueeze(1)).squeeze(1) - log_all
    log_p_rest = log_nontarget - log_all
    log_p_hat = (scaled - log_nontarget.unsqueeze(1)).masked_fill(target_mask, 0.0)
    return log_p_target, log_p_rest, log_p_hat


def dkd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    check_targets: bool = True,
) -> torch.Tensor:
    """DKD loss ``T^2 (alpha * TCKD + beta * NCKD)``, averaged over the batch.

    ``student_logits`` and ``teacher_logits`` are ``(N, K)`` with ``K >= 2``; ``target`` is
    ``(N,)`` integer class indices. The defaults (alpha 1, beta 8, T 4) are the CIFAR-100
    convention; the authors' ImageNet runs use T = 1, alpha = 1, beta = 0.5 (ResNet-18
    student) or 2.0 (MobileNet). ``teacher_logits`` is detached. Computed in float32 (or
    the input's precision if higher).

    ``check_targets=False`` skips the range check of ``target``, which reads the labels
    back to the host (a GPU stall at every call); the trainer checks the data set's labels
    once instead.
    """
    _check_dkd_arguments(student_logits, teacher_logits, target, temperature, check_targets=check_targets)
    return dkd_per_sample(student_logits, teacher_logits, target, alpha, beta, temperature).mean() * temperature**2


def _check_dkd_arguments(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    *,
    check_targets: bool,
) -> None:
    """Refuse shapes, dtypes, a temperature or (``check_targets``) labels that :func:`dkd` cannot use."""
    if student_logits.shape != teacher_logits.shape:
        raise ArgumentError(f"logit shapes differ: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    if student_logits.dim() != 2:
        raise ArgumentError(f"logits must be (batch, classes), got shape {tuple(student_logits.shape)}")
    batch, num_classes = student_logits.shape
    if num_classes < 2:
        raise ArgumentError(f"DKD needs at least 2 classes, got {num_classes}")
    if target.shape != (batch,):
        raise ArgumentError(f"target must have shape ({batch},), got {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ArgumentError(f"target must hold integer class indices, got dtype {target.dtype}")
    if temperature <= 0:
        raise ArgumentError(f"temperature must be > 0, got {temperature}")
    if check_targets and batch and (target.min() < 0 or target.max() >= num_classes):
        raise ArgumentError(
            f"target indices must lie in [0, {num_classes}), got range [{int(target.min())}, {int(target.max())}]"
        )


def dkd_per_sample(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * TCKD + beta * NCKD`` per row, before the batch mean and the ``T^2`` (no checks: see :func:`dkd`)."""
    target = target.to(device=student_logits.device, dtype=torch.long)
    s_log_t, s_log_rest, s_log_hat = _binary_and_nontarget_log_probs(student_logits, target, temperature)
    t_log_t, t_log_rest, t_log_hat = _binary_and_nontarget_log_probs(teacher_logits.detach(), target, temperature)

    tckd = t_log_t.exp() * (t_log_t - s_log_t) + t_log_rest.exp() * (t_log_rest - s_log_rest)
    # The target entries of both log_p_hat are 0, so they add exp(0) * (0 - 0) = 0.
    nckd = (t_log_hat.exp() * (t_log_hat - s_log_hat)).sum(dim=1)
    return alpha * tckd + beta * nckd
