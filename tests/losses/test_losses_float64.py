"""The soft-target losses keep float64 logits in float64 and upcast only half precision.

A golden check against independent float64 references written in numpy: SCE, KD and DKD on
float64 logits agree to 1e-12 (rounding to float32 inside the loss would leave ~1e-8).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpd.losses import dkd, kd, sce

TOL = 1e-12


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def reference_sce(student: np.ndarray, dynamic: np.ndarray, eps: float) -> float:
    """mean over the batch of -sum_c q_c log softmax(z_S)_c, q = (1 - eps) softmax(z_D) + eps / K."""
    q = (1.0 - eps) * np.exp(_log_softmax(dynamic)) + eps / student.shape[-1]
    return float(-(q * _log_softmax(student)).sum(axis=-1).mean())


def reference_kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """T^2 KL(p_T || p_S) with p = softmax(z / T), averaged over the batch."""
    log_s, log_t = _log_softmax(student / temperature), _log_softmax(teacher / temperature)
    return float((np.exp(log_t) * (log_t - log_s)).sum(axis=-1).mean() * temperature**2)


def reference_dkd(
    student: np.ndarray, teacher: np.ndarray, target: np.ndarray, alpha: float, beta: float, temperature: float
) -> float:
    """T^2 (alpha TCKD + beta NCKD) from the probabilities, row by row (Zhao et al., CVPR 2022)."""
    total = 0.0
    for s_row, t_row, y in zip(student, teacher, target):
        p_s, p_t = np.exp(_log_softmax(s_row / temperature)), np.exp(_log_softmax(t_row / temperature))
        b_s, b_t = np.array([p_s[y], 1 - p_s[y]]), np.array([p_t[y], 1 - p_t[y]])
        tckd = (b_t * np.log(b_t / b_s)).sum()
        rest = np.arange(len(s_row)) != y
        hat_s, hat_t = p_s[rest] / p_s[rest].sum(), p_t[rest] / p_t[rest].sum()
        nckd = (hat_t * np.log(hat_t / hat_s)).sum()
        total += alpha * tckd + beta * nckd
    return total / len(student) * temperature**2


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    student = 3 * torch.randn(6, 10, generator=gen, dtype=torch.float64)
    teacher = 3 * torch.randn(6, 10, generator=gen, dtype=torch.float64)
    return student, teacher, torch.randint(0, 10, (6,), generator=gen)


def _close(got: torch.Tensor, expected: float) -> None:
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) <= TOL * max(1.0, abs(expected)), (got.item(), expected)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_sce_on_float64_logits_matches_the_float64_reference(logits, eps: float) -> None:
    student, teacher, _ = logits
    _close(sce(student, teacher, eps=eps), reference_sce(student.numpy(), teacher.numpy(), eps))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_on_float64_logits_matches_the_float64_reference(logits, temperature: float) -> None:
    student, teacher, _ = logits
    _close(kd(student, teacher, temperature), reference_kd(student.numpy(), teacher.numpy(), temperature))


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0)])
def test_dkd_on_float64_logits_matches_the_float64_reference(logits, alpha: float, beta: float, temperature: float):
    student, teacher, target = logits
    expected = reference_dkd(student.numpy(), teacher.numpy(), target.numpy(), alpha, beta, temperature)
    _close(dkd(student, teacher, target, alpha, beta, temperature), expected)


def test_the_golden_check_would_see_a_float32_rounding(logits) -> None:
    """The tolerance is tight enough: the same loss on the logits rounded to float32 misses it."""
    student, teacher, _ = logits
    rounded = sce(student.float(), teacher.float(), eps=0.1).item()
    assert abs(rounded - reference_sce(student.numpy(), teacher.numpy(), 0.1)) > TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(logits, dtype: torch.dtype) -> None:
    student, teacher, _ = (t.to(dtype) if t.is_floating_point() else t for t in logits)
    assert sce(student, teacher).dtype == torch.float32
    assert kd(student, teacher).dtype == torch.float32
    assert sce(student, teacher).item() == sce(student.float(), teacher.float()).item()


def test_float32_results_are_the_former_expressions_bit_for_bit(logits) -> None:
    student, teacher = (t.float() for t in logits[:2])
    target = (1.0 - 0.1) * F.softmax(teacher, dim=-1) + 0.1 / teacher.shape[-1]
    former_sce = -(target * F.log_softmax(student, dim=-1)).sum(dim=-1).mean()
    assert torch.equal(sce(student, teacher, eps=0.1), former_sce)
    log_s, log_t = F.log_softmax(student / 4.0, dim=-1), F.log_softmax(teacher / 4.0, dim=-1)
    former_kd = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * 4.0**2
    assert torch.equal(kd(student, teacher, 4.0), former_kd)


def test_dkd_float32_result_is_the_former_expression_bit_for_bit(logits) -> None:
    """dkd() now sums the per-sample helper the per-pixel DKD shares; the batch value is unchanged."""
    from gpd.losses.dkd import _binary_and_nontarget_log_probs

    student, teacher, target = logits[0].float(), logits[1].float(), logits[2]
    s_t, s_rest, s_hat = _binary_and_nontarget_log_probs(student, target, 4.0)
    t_t, t_rest, t_hat = _binary_and_nontarget_log_probs(teacher, target, 4.0)
    tckd = t_t.exp() * (t_t - s_t) + t_rest.exp() * (t_rest - s_rest)
    nckd = (t_hat.exp() * (t_hat - s_hat)).sum(dim=1)
    former = (1.0 * tckd + 8.0 * nckd).mean() * 4.0**2
    assert torch.equal(dkd(student, teacher, target, 1.0, 8.0, 4.0), former)
