"""DKD and ReviewKD losses: golden values computed independently with plain Python math and loops."""

import math

import pytest
import torch

from gpd.losses import ABF, ReviewKDHead, dkd, hcl, kd, reviewkd_loss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# ----------------------------------------------------------------------------------------
# DKD reference, from the paper's definitions with explicit loops


def softmax(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def reference_tckd_nckd(student_row, teacher_row, target, temperature):
    p_s = softmax([v / temperature for v in student_row])
    p_t = softmax([v / temperature for v in teacher_row])
    tckd = kl([p_t[target], 1 - p_t[target]], [p_s[target], 1 - p_s[target]])
    # Non-target distribution: softmax over the logits with the target class removed.
    s_rest = [v / temperature for i, v in enumerate(student_row) if i != target]
    t_rest = [v / temperature for i, v in enumerate(teacher_row) if i != target]
    nckd = kl(softmax(t_rest), softmax(s_rest))
    return tckd, nckd


def reference_dkd(student, teacher, targets, alpha, beta, temperature):
    total = 0.0
    for s_row, t_row, y in zip(student, teacher, targets):
        tckd, nckd = reference_tckd_nckd(s_row, t_row, y, temperature)
        total += alpha * tckd + beta * nckd
    return total / len(student) * temperature**2


STUDENT = [[1.0, 2.0, 0.5, -0.7], [-1.0, 0.0, 3.0, 0.4], [0.3, -0.2, 0.1, 1.5]]
TEACHER = [[0.2, 2.5, -0.3, 0.0], [0.0, 0.0, 1.0, 2.0], [2.0, -1.0, 0.5, 0.7]]
TARGETS = [1, 2, 0]


@pytest.mark.parametrize("alpha, beta, temperature", [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0), (2.0, 3.0, 2.0)])
def test_dkd_matches_reference(alpha, beta, temperature):
    got = dkd(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS), alpha, beta, temperature)
    assert got.dim() == 0
    expected = reference_dkd(STUDENT, TEACHER, TARGETS, alpha, beta, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_hand_worked_values():
    # Teacher (ln 3, 0, 0) -> p_T = (3/5, 1/5, 1/5); student (0, 0, 0) -> p_S = (1/3, 1/3, 1/3).
    # TCKD = 0.6 ln(0.6 / (1/3)) + 0.4 ln(0.4 / (2/3)); NCKD = 0 (both uniform off-target).
    # float64 inputs: the loss is computed in float64, so the match is to ~1e-12.
    student = torch.zeros(1, 3, dtype=torch.float64)
    teacher = torch.tensor([[math.log(3.0), 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0])
    tckd = 0.6 * math.log(1.8) + 0.4 * math.log(0.6)
    for beta in (0.0, 8.0):
        assert dkd(student, teacher, target, 1.0, beta, 1.0).item() == pytest.approx(tckd, rel=1e-12)
    # Teacher (0, ln 2, 0), target 0 -> p_T = (1/4, 1/2, 1/4), p_hat_T = (2/3, 1/3), p_hat_S = (1/2, 1/2).
    teacher = torch.tensor([[0.0, math.log(2.0), 0.0]], dtype=torch.float64)
    tckd = 0.25 * math.log(0.75) + 0.75 * math.log(1.125)
    nckd = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert dkd(student, teacher, target, 1.0, 0.0, 1.0).item() == pytest.approx(tckd, rel=1e-12)
    assert dkd(student, teacher, target, 0.0, 1.0, 1.0).item() == pytest.approx(nckd, rel=1e-12)
    assert dkd(student, teacher, target, 2.0, 5.0, 1.0).item() == pytest.approx(2 * tckd + 5 * nckd, rel=1e-12)


def test_dkd_beta_zero_is_binary_kl():
    # alpha = 1, beta = 0, T = 1: the batch mean of KL((p_T,t, 1 - p_T,t) || (p_S,t, 1 - p_S,t)).
    expected = 0.0
    for s_row, t_row, y in zip(STUDENT, TEACHER, TARGETS):
        p_s, p_t = softmax(s_row), softmax(t_row)
        expected += kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
    expected /= len(STUDENT)
    got = dkd(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS), alpha=1.0, beta=0.0, temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_decomposes_kd(temperature):
    # The paper's identity KL(p_T || p_S) = TCKD + (1 - p_T,t) NCKD, per sample.
    for s_row, t_row, y in zip(STUDENT, TEACHER, TARGETS):
        p_t_target = softmax([v / temperature for v in t_row])[y]
        student, teacher, target = torch.tensor([s_row]), torch.tensor([t_row]), torch.tensor([y])
        decoupled = dkd(student, teacher, target, alpha=1.0, beta=1.0 - p_t_target, temperature=temperature)
        assert decoupled.item() == pytest.approx(kd(student, teacher, temperature).item(), rel=1e-5)


def test_dkd_is_zero_for_equal_logits():
    logits = torch.tensor(STUDENT)
    assert dkd(logits, logits.clone(), torch.tensor(TARGETS)).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_sends_no_gradient_into_teacher():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    dkd(student, teacher, torch.tensor(TARGETS)).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.isfinite(student.grad).all()


def test_dkd_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 4, 2])
    assert torch.autograd.gradcheck(lambda s: dkd(s, teacher, target, 1.0, 8.0, 4.0), (student,))


def test_dkd_is_stable_for_confident_logits():
    # p_T,t = 1 - O(e^-200) in float32: log(1 - p_t) must not become log(0).
    student = torch.tensor([[150.0, 0.0, -50.0], [0.0, 300.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[200.0, 0.0, -100.0], [-100.0, 250.0, 0.0]])
    target = torch.tensor([0, 1])
    loss = dkd(student, teacher, target, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    expected = dkd(student.detach().double(), teacher.double(), target, 1.0, 8.0, 1.0)
    assert expected.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    # The NCKD part is well defined even though p_hat is computed from tiny probabilities.
    s_row, t_row = student.detach()[0].tolist(), teacher[0].tolist()
    _, nckd = reference_tckd_nckd(s_row, t_row, 0, 1.0)
    got = dkd(student.detach()[:1], teacher[:1], target[:1], 0.0, 1.0, 1.0).item()
    assert got == pytest.approx(nckd, rel=1e-4)


def test_dkd_rejects_bad_targets():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    with pytest.raises(ValueError):
        dkd(student, teacher, torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        dkd(student, teacher, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError):
        dkd(student, teacher, torch.tensor([0.0, 1.0, 2.0]))


# ----------------------------------------------------------------------------------------
# HCL reference, with explicit loops over nested lists


def avg_pool(grid, size):
    """Average-pool a square H x H list-of-lists to size x size (H divisible by size)."""
    step = len(grid) // size
    return [
        [sum(grid[r * step + i][c * step + j] for i in range(step) for j in range(step)) / step**2 for c in range(size)]
        for r in range(size)
    ]


def mse_maps(student, teacher, size):
    """Mean squared difference of two (N, C, H, H) nested lists after pooling to size x size."""
    total, count = 0.0, 0
    for s_n, t_n in zip(student, teacher):
        for s_c, t_c in zip(s_n, t_n):
            s_p, t_p = avg_pool(s_c, size), avg_pool(t_c, size)
            for s_r, t_r in zip(s_p, t_p):
                for a, b in zip(s_r, t_r):
                    total += (a - b) ** 2
                    count += 1
    return total / count


def reference_hcl_pair(student, teacher, sizes):
    """sizes: the full size first, then the used pooled sizes; weights 1, 1/2, 1/4, ..."""
    weights = [0.5**k for k in range(len(sizes))]
    return sum(w * mse_maps(student, teacher, s) for w, s in zip(weights, sizes)) / sum(weights)


def test_hcl_hand_worked_value():
    # s = 0..15 on a 4x4 map, t = 0. Levels (4, 2, 1): 4 is not smaller than the map.
    # full: mean(k^2, k < 16) = 1240 / 16 = 77.5
    # 2x2: block means 2.5, 4.5, 10.5, 12.5 -> (6.25 + 20.25 + 110.25 + 156.25) / 4 = 73.25
    # 1x1: mean 7.5 -> 56.25
    # (77.5 + 0.5 * 73.25 + 0.25 * 56.25) / 1.75 = 128.1875 / 1.75 = 73.25
    student = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert hcl([student], [torch.zeros(1, 1, 4, 4)]).item() == pytest.approx(73.25, rel=1e-7)


def test_hcl_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 8, 8), (2, 2, 4, 4), (1, 2, 2, 2)]
    students = [torch.randn(s, generator=gen) for s in shapes]
    teachers = [torch.randn(s, generator=gen) for s in shapes]
    # Used sizes for the default levels (4, 2, 1): 8x8 -> 8, 4, 2, 1; 4x4 -> 4, 2, 1; 2x2 -> 2, 1.
    sizes = [[8, 4, 2, 1], [4, 2, 1], [2, 1]]
    expected = sum(reference_hcl_pair(s.tolist(), t.tolist(), z) for s, t, z in zip(students, teachers, sizes))
    assert hcl(students, teachers).item() == pytest.approx(expected, rel=1e-5)
    # Custom levels: only 2 is used on the 8x8 map (weights 1, 0.5).
    expected = reference_hcl_pair(students[0].tolist(), teachers[0].tolist(), [8, 2])
    assert hcl(students[:1], teachers[:1], levels=(2,)).item() == pytest.approx(expected, rel=1e-5)


def test_hcl_sends_no_gradient_into_teacher():
    student = torch.randn(1, 2, 4, 4, requires_grad=True)
    teacher = torch.randn(1, 2, 4, 4, requires_grad=True)
    hcl([student], [teacher]).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


def test_hcl_rejects_mismatched_pairs():
    with pytest.raises(ValueError):
        hcl([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 3, 4, 4)])
    with pytest.raises(ValueError):
        hcl([torch.zeros(1, 2, 4, 4)], [])


# ----------------------------------------------------------------------------------------
# ABF and ReviewKDHead

STUDENT_CHANNELS = [16, 32, 64]
TEACHER_CHANNELS = [32, 64, 128]
SIZES = [32, 16, 8]


def student_features(batch=2, requires_grad=False):
    gen = torch.Generator().manual_seed(1)
    return [
        torch.randn(batch, c, s, s, generator=gen).requires_grad_(requires_grad)
        for c, s in zip(STUDENT_CHANNELS, SIZES)
    ]


def test_abf_shapes_and_fusion_contract():
    abf = ABF(16, 8, 24, fuse=True)
    x, residual = torch.randn(2, 16, 8, 8), torch.randn(2, 8, 4, 4)
    out, fused = abf(x, residual)
    assert out.shape == (2, 24, 8, 8) and fused.shape == (2, 8, 8, 8)
    out, fused = abf(x, residual, out_size=16)
    assert out.shape == (2, 24, 16, 16) and fused.shape == (2, 8, 8, 8)
    with pytest.raises(ValueError):
        abf(x)
    deepest = ABF(16, 8, 24, fuse=False)
    out, fused = deepest(x)
    assert out.shape == (2, 24, 8, 8) and fused.shape == (2, 8, 8, 8)
    with pytest.raises(ValueError):
        deepest(x, residual)


def test_reviewkd_head_shapes_and_direction():
    torch.manual_seed(0)
    head = ReviewKDHead(STUDENT_CHANNELS, TEACHER_CHANNELS, mid_channels=16)
    assert [abf.fuse for abf in head.abfs] == [True, True, False]
    feats = student_features()
    outs = head(feats)
    assert [tuple(o.shape) for o in outs] == [(2, c, s, s) for c, s in zip(TEACHER_CHANNELS, SIZES)]
    # Fusion runs deep -> shallow: the deepest feature reaches the shallow output, not the reverse.
    head.eval()
    with torch.no_grad():
        base = head(feats)
        moved_deep = head(feats[:2] + [feats[2] + 1.0])
        moved_shallow = head([feats[0] + 1.0] + feats[1:])
    assert not torch.allclose(moved_deep[0], base[0])
    assert torch.equal(moved_shallow[2], base[2]) and torch.equal(moved_shallow[1], base[1])


def test_reviewkd_loss_gradients():
    torch.manual_seed(0)
    head = ReviewKDHead(STUDENT_CHANNELS, TEACHER_CHANNELS, mid_channels=16)
    feats = student_features(requires_grad=True)
    gen = torch.Generator().manual_seed(2)
    # The shallowest teacher map is twice the student's size: it is average-pooled to 32x32.
    teacher_sizes = [64, 16, 8]
    teachers = [
        torch.randn(2, c, s, s, generator=gen).requires_grad_(True) for c, s in zip(TEACHER_CHANNELS, teacher_sizes)
    ]
    loss = reviewkd_loss(head, feats, teachers)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for feat in feats:
        assert feat.grad is not None and feat.grad.abs().sum() > 0
    for teacher in teachers:
        assert teacher.grad is None
    # The loss equals HCL against the pooled teacher maps.
    with torch.no_grad():
        targets = [torch.nn.functional.adaptive_avg_pool2d(teachers[0], 32)] + teachers[1:]
        assert loss.item() == pytest.approx(hcl(head(feats), targets).item(), rel=1e-5)


def test_reviewkd_head_rejects_mismatched_stages():
    with pytest.raises(ValueError):
        ReviewKDHead([16, 32], [32, 64, 128], 16)
    head = ReviewKDHead(STUDENT_CHANNELS, TEACHER_CHANNELS, 16)
    with pytest.raises(ValueError):
        head(student_features()[:2])
