"""The two paths of a six-branch block (merged kernel / branches on the batch) and the merged-kernel cache.

References: autograd through the six branches applied as separate real ops
(``branch_outputs`` of test_branches.py), never the block's own merge; and
``torch.autograd.gradcheck`` (finite differences) for the merge's analytic backward.
"""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
from test_branches import CONV_CASES, branch_outputs, randomized_block
from timm.utils import ModelEmaV3
from torch import nn

import gpd
from gpd.branches import OREPAConv2d, add_branches
from gpd.branches import orepa as orepa_module
from gpd.branches.merge import MergeKernel
from gpd.branches.paths import ALL_MERGED, BlockShape, BranchPaths, choose_paths
from gpd.models import create_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PATH_COMBOS = [BranchPaths(m1, m5) for m1, m5 in itertools.product((True, False), repeat=2)]


def reference_output(block: OREPAConv2d, x: torch.Tensor) -> torch.Tensor:
    outputs = branch_outputs(block, x)
    out = sum(block.branch_scales[b].view(1, -1, 1, 1) * y for b, y in enumerate(outputs))
    return out + block.bias.view(1, -1, 1, 1) if block.bias is not None else out


def forward_and_grads(block: OREPAConv2d, x: torch.Tensor, run) -> list[torch.Tensor]:
    """Output, input gradient and every parameter gradient of ``(run(x) * weights).sum()``."""
    x = x.detach().clone().requires_grad_(True)
    block.zero_grad(set_to_none=True)
    out = run(x)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return [out.detach(), x.grad, *[p.grad for p in block.parameters()]]


def force(monkeypatch: pytest.MonkeyPatch, paths: BranchPaths) -> None:
    monkeypatch.setattr(orepa_module, "choose_paths", lambda shape, path="auto": paths)


@pytest.mark.parametrize("kwargs", CONV_CASES)
@pytest.mark.parametrize("paths", PATH_COMBOS, ids=lambda p: p.describe())
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_every_path_equals_the_branches_as_real_ops_forward_and_backward(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, paths: BranchPaths, channels_last: bool
) -> None:
    torch.manual_seed(0)
    block = randomized_block(nn.Conv2d(kernel_size=3, **kwargs).double(), seed=4)
    x = torch.randn(2, kwargs["in_channels"], 7, 9, dtype=torch.float64)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    expected = forward_and_grads(block, x, lambda inp: reference_output(block, inp))
    force(monkeypatch, paths)
    got = forward_and_grads(block, x, block)
    assert block.last_path == paths.describe()
    names = ["output", "input", *[name for name, _ in block.named_parameters()]]
    for name, a, b in zip(names, got, expected):
        assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max()), name


@pytest.mark.parametrize(
    "groups, compose_1x1, compose_dw", list(itertools.product((1, 2, 6), (True, False), (True, False)))
)
def test_merge_backward_passes_gradcheck(groups: int, compose_1x1: bool, compose_dw: bool) -> None:
    block = randomized_block(nn.Conv2d(6, 6 if groups == 6 else 10, 3, padding=1, groups=groups).double(), seed=5)
    tensors = block._merge_inputs()
    assert torch.autograd.gradcheck(lambda *t: MergeKernel.apply(groups, compose_1x1, compose_dw, *t), tensors)


@pytest.mark.parametrize("groups, compose_dw", [(1, True), (1, False), (2, True)])
def test_merge_of_channels_last_kernels_passes_gradcheck(groups: int, compose_dw: bool) -> None:
    # channels_last kernels take the transposing copies of branch 5 (ungrouped) and the in-place branch-3 product
    block = randomized_block(nn.Conv2d(6, 10, 3, padding=1, groups=groups).double(), seed=6)
    block = block.to(memory_format=torch.channels_last)
    tensors = block._merge_inputs()
    assert tensors[1].is_contiguous(memory_format=torch.channels_last) and not tensors[1].is_contiguous()
    kernel = MergeKernel.apply(groups, True, compose_dw, *tensors)
    assert kernel.is_contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(lambda *t: MergeKernel.apply(groups, True, compose_dw, *t), tensors)


def test_cost_model_picks_the_batch_for_wide_blocks_on_small_maps_and_merges_otherwise() -> None:
    # D's layer4 of tv resnet18 at r = 2, 112 px (4x4 maps): batch 16 runs branch 3 on the batch, 64 merges
    assert not choose_paths(BlockShape(1024, 1024, 1, 16 * 4 * 4)).merge_1x1
    assert choose_paths(BlockShape(1024, 1024, 1, 64 * 4 * 4)).merge_1x1
    assert choose_paths(BlockShape(64, 64, 1, 16 * 56 * 56)) == ALL_MERGED  # narrow blocks on big maps: merge
    assert choose_paths(BlockShape(64, 64, 1, 1), "batch") == BranchPaths(False, False)
    assert choose_paths(BlockShape(1024, 1024, 1, 1), "merge") == ALL_MERGED


def test_unknown_path_is_a_one_line_argument_error() -> None:
    with pytest.raises(gpd.ArgumentError, match="branch path must be one of auto, merge, batch, got 'fast'"):
        choose_paths(BlockShape(8, 8, 1, 8), "fast")


# --- the cache -----------------------------------------------------------------------------


def test_eval_reuses_the_merged_kernel_until_an_optimizer_step_changes_the_weights() -> None:
    torch.manual_seed(0)
    block = randomized_block(nn.Conv2d(6, 10, 3, padding=1).double(), seed=6)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    cache = block._cache()
    with torch.no_grad():
        first = block(x)
        kernel = cache._value
        assert block.last_path == "merge" and kernel is not None
        assert torch.equal(block(x), first) and block.last_path == "cached" and cache._value is kernel
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    block(x).square().sum().backward()  # a training forward drops the cache
    assert cache._value is None
    optimizer.step()
    with torch.no_grad():
        after = block(x)
        assert block.last_path == "merge"  # the step bumped the versions: merged again
        assert not torch.equal(after, first)
        assert (after - reference_output(block, x)).abs().max() <= 1e-10
        with torch.no_grad():
            block.weight_dw.mul_(2)  # any in-place write invalidates
        assert (block(x) - reference_output(block, x)).abs().max() <= 1e-10 and block.last_path == "merge"


def test_cache_follows_load_state_dict_and_starts_empty_in_copies() -> None:
    torch.manual_seed(0)
    block = randomized_block(nn.Conv2d(4, 4, 3, padding=1).double(), seed=7)
    other = randomized_block(nn.Conv2d(4, 4, 3, padding=1).double(), seed=8)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        block(x)
        clone, unpickled = copy.deepcopy(block), pickle.loads(pickle.dumps(block))
        assert clone._cache()._value is None and unpickled._cache()._value is None
        block.load_state_dict(other.state_dict())
        assert torch.equal(block(x), other(x)) and block.last_path == "merge"


def test_inference_mode_never_hands_its_kernel_to_a_grad_forward() -> None:
    block = randomized_block(nn.Conv2d(4, 4, 3, padding=1), seed=9)
    x = torch.randn(1, 4, 5, 5)
    with torch.inference_mode():
        block(x)
        block(x)
        assert block.last_path == "cached"
    with torch.no_grad():
        block(x)
        assert block.last_path == "merge"  # not the inference tensor from inference mode
    block(x.requires_grad_()).sum().backward()


def test_ema_evaluation_is_cached_and_invalidated_by_the_ema_update() -> None:
    torch.manual_seed(0)
    model = add_branches(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)))
    ema = ModelEmaV3(model, decay=0.5)
    x = torch.randn(2, 3, 6, 6)
    blocks = [m for m in ema.module.modules() if isinstance(m, OREPAConv2d)]
    with torch.no_grad():
        before = ema.module(x)
        ema.module(x)
        assert all(b.last_path == "cached" for b in blocks)
        for p in model.parameters():
            p.add_(0.1)
        ema.update(model)
        after = ema.module(x)
        assert all(b.last_path == "merge" for b in blocks) and not torch.equal(before, after)
        fresh = copy.deepcopy(ema.module)
        assert torch.equal(fresh(x), after)


# --- the student, whose branch tensors are slices of D's ------------------------------------


def test_student_blocks_choose_their_path_and_both_paths_give_the_same_step(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_chans=1)
    gpd_model = gpd.expand(student, 2, input_size=(1, 12, 12), branches="orepa").double().train()
    with torch.no_grad():  # D's copies differ and W_id is nonzero: every path matters
        for p in gpd_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)

    def grads(paths: BranchPaths | None) -> list[torch.Tensor]:
        if paths is not None:
            force(monkeypatch, paths)
        else:
            monkeypatch.undo()
        gpd_model.zero_grad(set_to_none=True)
        (gpd_model.forward_student(x).square().sum() + gpd_model.forward_dynamic(x).square().sum()).backward()
        return [p.grad.clone() for p in gpd_model.parameters()]

    student_blocks = [m for m in gpd_model.student.modules() if isinstance(m, OREPAConv2d)]
    dynamic_blocks = [m for m in gpd_model.dynamic.modules() if isinstance(m, OREPAConv2d)]
    merged = grads(BranchPaths(True, True))
    on_batch = grads(BranchPaths(False, False))
    assert {b.last_path for b in student_blocks + dynamic_blocks} == {"batch:b3+b5"}
    automatic = grads(None)
    assert all(b.last_path for b in student_blocks)
    for a, b, c in zip(merged, on_batch, automatic):
        assert (a - b).abs().max() <= 1e-10 * (1 + a.abs().max())
        assert (a - c).abs().max() <= 1e-10 * (1 + a.abs().max())


def test_student_evaluation_reuses_its_merged_kernels_until_d_changes() -> None:
    torch.manual_seed(0)
    gpd_model = gpd.expand(create_model("resnet8", num_classes=10, in_chans=1), 2, input_size=(1, 12, 12),
                           branches="orepa").eval()  # fmt: skip
    x = torch.randn(2, 1, 12, 12)
    blocks = [m for m in gpd_model.student.modules() if isinstance(m, OREPAConv2d)]
    with torch.no_grad():
        first = gpd_model.forward_student(x)
        assert torch.equal(gpd_model.forward_student(x), first)
        assert all(b.last_path == "cached" for b in blocks)
        for p in gpd_model.dynamic.parameters():
            p.mul_(1.01)
        changed = gpd_model.forward_student(x)
        assert all(b.last_path == "merge" for b in blocks) and not torch.equal(changed, first)
        assert (changed - gpd_model.export_student().eval()(x)).abs().max() <= 1e-5
