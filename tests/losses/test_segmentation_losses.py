"""Golden values for the per-pixel losses, from float64 numpy references written from the formulas.

Each reference loops over pixels (or channel maps) and applies the formula of the loss's
docstring, so it shares no code with gpd.losses. The example is (N, C, H, W) = (2, 3, 4, 5)
with a few pixels labelled 255 (ignored).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpd.errors import ArgumentError
from gpd.losses import (
    channel_wise_kd,
    dkd,
    kd,
    pixel_cross_entropy,
    pixel_dkd,
    pixel_kd,
    pixel_sce,
    sce,
)

TOL = 1e-10
IGNORED = [(0, 0, 0), (0, 2, 3), (1, 1, 1), (1, 3, 4), (1, 3, 0)]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max()
    return shifted - np.log(np.exp(shifted).sum())


def _pixels(shape: tuple[int, ...]):
    n, _, h, w = shape
    return itertools.product(range(n), range(h), range(w))


def reference_ce(z: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> float:
    """Mean over labelled pixels of (1 - s)(-log p_y) + s * mean_c(-log p_c)."""
    losses = []
    for n, i, j in _pixels(z.shape):
        if y[n, i, j] == 255:
            continue
        log_p = _log_softmax(z[n, :, i, j])
        losses.append((1 - smoothing) * -log_p[y[n, i, j]] + smoothing * -log_p.mean())
    return float(np.mean(losses)) if losses else 0.0


def reference_sce(zs: np.ndarray, zd: np.ndarray, eps: float, y: np.ndarray | None = None) -> float:
    """Mean over pixels (labelled ones if y is given) of -sum_c q_c log p_S,c, q = (1 - eps) p_D + eps / C."""
    losses = []
    for n, i, j in _pixels(zs.shape):
        if y is not None and y[n, i, j] == 255:
            continue
        q = (1 - eps) * np.exp(_log_softmax(zd[n, :, i, j])) + eps / zs.shape[1]
        losses.append(-(q * _log_softmax(zs[n, :, i, j])).sum())
    return float(np.mean(losses))


def reference_kd(zs: np.ndarray, zt: np.ndarray, temperature: float, y: np.ndarray | None = None) -> float:
    """Mean over pixels of T^2 sum_c p_T,c log(p_T,c / p_S,c), p = softmax(z / T)."""
    losses = []
    for n, i, j in _pixels(zs.shape):
        if y is not None and y[n, i, j] == 255:
            continue
        p_t = np.exp(_log_softmax(zt[n, :, i, j] / temperature))
        p_s = np.exp(_log_softmax(zs[n, :, i, j] / temperature))
        losses.append(temperature**2 * (p_t * np.log(p_t / p_s)).sum())
    return float(np.mean(losses))


def reference_dkd(
    zs: np.ndarray, zt: np.ndarray, y: np.ndarray, alpha: float, beta: float, temperature: float
) -> float:
    """Mean over labelled pixels of T^2 (alpha TCKD + beta NCKD), from the probabilities."""
    losses = []
    for n, i, j in _pixels(zs.shape):
        label = y[n, i, j]
        if label == 255:
            continue
        p_s = np.exp(_log_softmax(zs[n, :, i, j] / temperature))
        p_t = np.exp(_log_softmax(zt[n, :, i, j] / temperature))
        b_s, b_t = np.array([p_s[label], 1 - p_s[label]]), np.array([p_t[label], 1 - p_t[label]])
        rest = np.arange(zs.shape[1]) != label
        hat_s, hat_t = p_s[rest] / p_s[rest].sum(), p_t[rest] / p_t[rest].sum()
        tckd = (b_t * np.log(b_t / b_s)).sum()
        nckd = (hat_t * np.log(hat_t / hat_s)).sum()
        losses.append(temperature**2 * (alpha * tckd + beta * nckd))
    return float(np.mean(losses)) if losses else 0.0


def reference_cwd(zs: np.ndarray, zt: np.ndarray, tau: float) -> float:
    """Shu et al. (ICCV 2021): tau^2 / C sum_c KL(phi(z_T,c / tau) || phi(z_S,c / tau)), batch mean."""
    batch, channels = zs.shape[:2]
    total = 0.0
    for n in range(batch):
        per_image = 0.0
        for c in range(channels):
            phi_t = np.exp(_log_softmax(zt[n, c].reshape(-1) / tau))
            phi_s = np.exp(_log_softmax(zs[n, c].reshape(-1) / tau))
            per_image += (phi_t * np.log(phi_t / phi_s)).sum()
        total += tau**2 / channels * per_image
    return total / batch


@pytest.fixture
def maps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    student = 3 * torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    teacher = 3 * torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    for pixel in IGNORED:
        labels[pixel] = 255
    return student, teacher, labels


def _close(got: torch.Tensor, expected: float) -> None:
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) <= TOL * max(1.0, abs(expected)), (got.item(), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_pixel_cross_entropy_averages_over_labelled_pixels(maps, smoothing: float) -> None:
    student, _, labels = maps
    expected = reference_ce(student.numpy(), labels.numpy(), smoothing)
    _close(pixel_cross_entropy(student, labels, label_smoothing=smoothing), expected)
    # Averaging over all 40 pixels would give another value: the ignored ones are not counted.
    assert abs(expected * 35 / 40 - expected) > 1e-3


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_pixel_sce_golden(maps, eps: float) -> None:
    student, dynamic, labels = maps
    _close(pixel_sce(student, dynamic, eps), reference_sce(student.numpy(), dynamic.numpy(), eps))
    expected_labelled = reference_sce(student.numpy(), dynamic.numpy(), eps, labels.numpy())
    _close(pixel_sce(student, dynamic, eps, target=labels), expected_labelled)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_pixel_kd_golden(maps, temperature: float) -> None:
    student, teacher, labels = maps
    _close(pixel_kd(student, teacher, temperature), reference_kd(student.numpy(), teacher.numpy(), temperature))
    expected_labelled = reference_kd(student.numpy(), teacher.numpy(), temperature, labels.numpy())
    _close(pixel_kd(student, teacher, temperature, target=labels), expected_labelled)


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0)])
def test_pixel_dkd_golden(maps, alpha: float, beta: float, temperature: float) -> None:
    student, teacher, labels = maps
    expected = reference_dkd(student.numpy(), teacher.numpy(), labels.numpy(), alpha, beta, temperature)
    _close(pixel_dkd(student, teacher, labels, alpha, beta, temperature), expected)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_channel_wise_kd_golden(maps, tau: float) -> None:
    student, teacher, _ = maps
    _close(channel_wise_kd(student, teacher, tau), reference_cwd(student.numpy(), teacher.numpy(), tau))


def _losses_of_student(teacher: torch.Tensor, labels: torch.Tensor):
    return {
        "ce": lambda s: pixel_cross_entropy(s, labels, label_smoothing=0.1),
        "sce": lambda s: pixel_sce(s, teacher),
        "sce_labelled": lambda s: pixel_sce(s, teacher, target=labels),
        "kd": lambda s: pixel_kd(s, teacher, 2.0),
        "kd_labelled": lambda s: pixel_kd(s, teacher, 2.0, target=labels),
        "dkd": lambda s: pixel_dkd(s, teacher, labels),
        "cwd": lambda s: channel_wise_kd(s, teacher, 2.0),
    }


@pytest.mark.parametrize("name", ["ce", "sce", "sce_labelled", "kd", "kd_labelled", "dkd", "cwd"])
def test_gradients_match_finite_differences(maps, name: str) -> None:
    student, teacher, labels = maps
    loss = _losses_of_student(teacher, labels)[name]
    assert torch.autograd.gradcheck(loss, (student.clone().requires_grad_(),))


@pytest.mark.parametrize("name", ["sce", "kd", "dkd", "cwd"])
def test_the_teacher_gets_no_gradient(maps, name: str) -> None:
    student, teacher, labels = maps
    teacher = teacher.clone().requires_grad_()
    _losses_of_student(teacher, labels)[name](student.clone().requires_grad_()).backward()
    assert teacher.grad is None


@pytest.mark.parametrize("name", ["ce", "sce_labelled", "kd_labelled", "dkd"])
def test_a_batch_without_labelled_pixels_gives_zero_and_zero_gradients(maps, name: str) -> None:
    student, teacher, labels = maps
    student = student.clone().requires_grad_()
    loss = _losses_of_student(teacher, torch.full_like(labels, 255))[name](student)
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["ce", "sce", "sce_labelled", "kd", "kd_labelled", "dkd", "cwd"])
def test_half_precision_logits_are_computed_in_float32(maps, dtype: torch.dtype, name: str) -> None:
    student, teacher, labels = maps
    half_student, half_teacher = student.to(dtype), teacher.to(dtype)
    got = _losses_of_student(half_teacher, labels)[name](half_student)
    assert got.dtype == torch.float32
    assert torch.equal(got, _losses_of_student(half_teacher.float(), labels)[name](half_student.float()))


def test_one_pixel_maps_give_the_classification_losses(maps) -> None:
    student, teacher = maps[0][:, :, 0, 0], maps[1][:, :, 0, 0]
    labels = torch.tensor([2, 0])
    s4, t4, y3 = student[..., None, None], teacher[..., None, None], labels[:, None, None]
    for dtype in (torch.float32, torch.float64):
        s, t, s_map, t_map = (x.to(dtype) for x in (student, teacher, s4, t4))
        assert torch.equal(pixel_sce(s_map, t_map, 0.1), sce(s, t, 0.1))
        assert torch.equal(pixel_kd(s_map, t_map, 4.0), kd(s, t, 4.0))
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        assert torch.allclose(pixel_cross_entropy(s_map, y3), F.cross_entropy(s, labels), rtol=tol, atol=0)
        assert torch.allclose(pixel_dkd(s_map, t_map, y3), dkd(s, t, labels), rtol=tol, atol=0)
        assert channel_wise_kd(s_map, t_map).item() == 0.0  # one position: every channel's phi is 1


@pytest.mark.parametrize("name", ["sce", "kd", "dkd", "cwd"])
def test_a_teacher_of_another_size_is_resized_bilinearly_to_the_student(maps, name: str) -> None:
    student, teacher, labels = maps
    small = teacher[:, :, ::2, ::2]
    resized = F.interpolate(small, size=(4, 5), mode="bilinear", align_corners=False)
    got = _losses_of_student(small, labels)[name](student)
    assert torch.equal(got, _losses_of_student(resized, labels)[name](student))
    assert torch.autograd.gradcheck(_losses_of_student(small, labels)[name], (student.clone().requires_grad_(),))


def test_bad_inputs_are_refused_with_one_line_errors(maps) -> None:
    student, teacher, labels = maps
    bad = labels.clone()
    bad[1, 0, 0] = 7
    with pytest.raises(ArgumentError, match="target holds 7"):
        pixel_cross_entropy(student, bad)
    with pytest.raises(ArgumentError, match="target holds 7"):
        pixel_dkd(student, teacher, bad)
    with pytest.raises(ArgumentError, match="target must have shape"):
        pixel_cross_entropy(student, labels[:, :2])
    with pytest.raises(ArgumentError, match="integer class indices"):
        pixel_cross_entropy(student, labels.double())
    with pytest.raises(ArgumentError, match="batch, classes"):
        pixel_kd(student, teacher[:, :2])
    with pytest.raises(ArgumentError, match=r"\*spatial"):
        pixel_sce(student[:, :, 0, 0], teacher[:, :, 0, 0])
    with pytest.raises(ArgumentError, match="tau"):
        channel_wise_kd(student, teacher, 0.0)
    with pytest.raises(ArgumentError, match="eps"):
        pixel_sce(student, teacher, 1.5, target=labels)
    with pytest.raises(ArgumentError, match="temperature"):
        pixel_kd(student, teacher, -1.0, target=labels)


def test_another_ignore_index_is_honoured(maps) -> None:
    student, _, labels = maps
    relabelled = torch.where(labels == 255, -100, labels)
    assert torch.equal(
        pixel_cross_entropy(student, relabelled, ignore_index=-100), pixel_cross_entropy(student, labels)
    )
