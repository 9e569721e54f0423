"""Golden values for the losses, computed by hand with plain Python math."""

import math

import pytest
import torch

from gpd.losses import kd, sce


def softmax(row):
    exps = [math.exp(v - max(row)) for v in row]
    return [e / sum(exps) for e in exps]


def reference_sce(student, teacher, eps):
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        k = len(s_row)
        q = [(1 - eps) * p + eps / k for p in softmax(t_row)]
        log_p = [math.log(p) for p in softmax(s_row)]
        total += -sum(qc * lc for qc, lc in zip(q, log_p))
    return total / len(student)


def reference_kd(student, teacher, temperature):
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_t = softmax([v / temperature for v in t_row])
        p_s = softmax([v / temperature for v in s_row])
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s))
    return total / len(student) * temperature**2


STUDENT = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
TEACHER = [[0.2, 2.5, -0.3], [0.0, 0.0, 1.0]]


def test_sce_fixed_golden_value():
    # Worked by hand for one sample: z_S = (0, 0), z_D = (ln 3, 0), eps = 0.1, K = 2.
    # softmax(z_D) = (0.75, 0.25) -> q = (0.725, 0.275); log softmax(z_S) = (-ln 2, -ln 2).
    value = sce(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), eps=0.1)
    assert value.item() == pytest.approx(math.log(2.0), abs=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_sce_matches_reference(eps):
    got = sce(torch.tensor(STUDENT), torch.tensor(TEACHER), eps=eps).item()
    assert got == pytest.approx(reference_sce(STUDENT, TEACHER, eps), rel=1e-6)


def test_sce_sends_no_gradient_into_teacher():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    sce(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_sce_is_minimal_at_smoothed_target():
    # The gradient wrt the student logits is softmax(z_S) - q: zero when softmax(z_S) = q.
    teacher = torch.tensor([TEACHER[0]])
    q = 0.9 * torch.softmax(teacher, -1) + 0.1 / 3
    student = q.log().clone().requires_grad_(True)
    sce(student, teacher, eps=0.1).backward()
    assert student.grad.abs().max() < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_reference(temperature):
    got = kd(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature).item()
    assert got == pytest.approx(reference_kd(STUDENT, TEACHER, temperature), rel=1e-5)


def test_kd_is_zero_for_equal_logits():
    logits = torch.tensor(STUDENT)
    assert kd(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
