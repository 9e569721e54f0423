"""OREPA-style six-branch replacement of a 3x3 stride-1 convolution (Channel-Branch Reparameterization; docs/branches.md).

During training the block's kernel is a sum of six *linear* branches, each scaled per
output channel by a learnable vector ``branch_scales[b]`` (O = out_channels, I =
in_channels, g = groups, Ig = I / g, Og = O / g):

=====  ==========================================  ======================================
 b     branch                                       3x3 kernel it contributes, K_b[o, i]
=====  ==========================================  ======================================
 0     ``weight_3x3`` (O, Ig, 3, 3)                 K0[o, i]
 1     1x1 conv ``weight_avg`` (O, Ig), then 3x3    A[o, i] / 9 on all nine taps
       average pooling
 2     1x1 conv ``weight_prior`` (O, Ig) times the  P[o, i] * prior[o]
       fixed buffer ``prior`` (O, 3, 3)
 3     grouped 1x1 conv (Id + ``weight_id_1x1``)    sum_m K3[o, m] (Id + W_id)[g0 + m, i]
       (I, Ig), then 3x3 conv ``weight_3x3_after_1x1``
 4     ``weight_3x3_extra`` (O, Ig, 3, 3)           K4[o, i]
 5     depthwise 3x3 ``weight_dw`` (8 I, 1, 3, 3),  sum_k pw[o, 8 i + k] dw[8 (g0 + i) + k]
       then grouped 1x1 ``weight_pw`` (O, 8 Ig)
=====  ==========================================  ======================================

(g0 = first input channel of the group of o; i and m are indices inside that group.)

Because every branch is linear in the input, the block is exactly one convolution with
the merged kernel ``K = sum_b diag(branch_scales[b]) K_b`` (plus the original bias), and
the exported student is a plain ``nn.Conv2d``. In training the forward pass merges what is
cheap to merge and runs one ``F.conv2d``; the composed branches 3 (the inner 1x1 W) and 5
are merged or run on the batch, whichever the cost model of :mod:`gpd.branches.paths`
finds cheaper for the block's shape and this batch (both exact: tests/branches/test_branch_paths.py).
Without gradients (evaluation, EMA evaluation, export) the merged kernel is cached until
a branch tensor is written (:mod:`gpd.sharing.cache`).

Why the composed branches are exact, including at the zero-padded border:

* b1: a 1x1 convolution (without bias) of a zero-padded input is zero on the padding,
  and average pooling with ``count_include_pad=True`` divides by 9 everywhere, so
  ``avg_pool3x3(conv1x1(x, A))`` is the 3x3 convolution of x with A / 9 on every tap.
  That holds for padding 1 and dilation 1 (pooling is not dilated), the only
  convolutions :func:`gpd.branches.is_branchable` selects; with another dilation the
  block still works, b1 then being a dilated average of the 1x1 output.
* b3 and b5: a 1x1 conv before a 3x3 conv, or a depthwise 3x3 conv before a 1x1 conv,
  commute with zero padding the same way, for any padding and dilation.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpd.branches.merge import DW_MULTIPLIER, MergeKernel, compose_1x1_3x3, compose_dw_pw, merge_kernel_values
from gpd.branches.paths import BlockShape, choose_paths
from gpd.errors import ArgumentError, ModelError
from gpd.sharing.cache import VersionedCache

BranchInit = Literal["default", "identity"]

NUM_BRANCHES = 6
DEFAULT_SCALES = (0.25, 0.25, 0.0, 0.5, 0.05, 0.5)  # the authors' scales at random init
IDENTITY_SCALES = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # only K0: the block equals the conv


def dct_prior(out_channels: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Tensor:
    """The fixed (O, 3, 3) frequency prior: output channel o gets 2-D DCT-II basis o mod 9.

    Basis ``idx`` has frequencies u = idx // 3 (rows) and v = idx % 3 (columns):
    ``basis[h, w] = c(u) c(v) cos(pi (2h + 1) u / 6) cos(pi (2w + 1) v / 6)`` with the
    orthonormal DCT-II factors c(0) = sqrt(1/3), c(k > 0) = sqrt(2/3), so the nine
    bases are orthonormal (each has unit Frobenius norm; basis 0 is the constant 1/3).
    """
    position = torch.arange(3, dtype=torch.float64)  # h or w
    frequency = position[:, None]  # u or v
    factor = torch.tensor([math.sqrt(1 / 3), math.sqrt(2 / 3), math.sqrt(2 / 3)], dtype=torch.float64)
    cosines = factor[:, None] * torch.cos(math.pi * (2 * position[None, :] + 1) * frequency / 6)  # (u, h)
    bases = torch.einsum("uh,vw->uvhw", cosines, cosines).reshape(9, 3, 3)  # index u * 3 + v
    prior = bases[torch.arange(out_channels) % 9]
    return prior.to(dtype=dtype or torch.get_default_dtype(), device=device)


def _uniform(shape: tuple[int, ...], fan_in: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what nn.Conv2d's default (kaiming-uniform, a=sqrt(5)) draws.

    Drawn on the CPU in float32 so a seeded generator gives the same values on every
    device, then moved to ``like``'s device and dtype.
    """
    bound = 1.0 / math.sqrt(fan_in)
    values = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return values.to(device=like.device, dtype=like.dtype)


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _tensorless_copy(conv: nn.Conv2d) -> nn.Conv2d:
    """A deep copy of ``conv`` whose own parameters are None (they are filled in by to_conv).

    Pre-seeding deepcopy's memo maps each parameter to None, so the tensors are never
    copied and the copy keeps the class and every other attribute of the original.
    """
    memo: dict[int, object] = {id(p): None for p in conv.parameters(recurse=False)}
    return copy.deepcopy(conv, memo)


def check_convertible(conv: nn.Module) -> None:
    """Raise ModelError (one line) unless ``conv`` is a 3x3, stride-1, zero-padded nn.Conv2d.

    A subclass that overrides ``forward`` (weight standardisation, dynamic "same"
    padding) is refused: its output is not ``F.conv2d`` of its weight, so a block that
    runs plain ``F.conv2d`` would compute something else.
    """
    name = type(conv).__name__
    if not isinstance(conv, nn.Conv2d) or getattr(conv, "transposed", False):
        raise ModelError(f"OREPAConv2d replaces an nn.Conv2d, got {name}")
    if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
        raise ModelError(f"{name} overrides the convolution's forward; OREPAConv2d only replaces plain convolutions")
    if _pair(conv.kernel_size) != (3, 3):
        raise ModelError(f"OREPAConv2d replaces 3x3 convolutions, got kernel_size {tuple(conv.kernel_size)}")
    if _pair(conv.stride) != (1, 1):
        raise ModelError(f"OREPAConv2d replaces stride-1 convolutions, got stride {tuple(conv.stride)}")
    if conv.padding_mode != "zeros":
        raise ModelError(
            f"OREPAConv2d needs zero padding (its branches commute with it), got padding_mode '{conv.padding_mode}'"
        )


class OREPAConv2d(nn.Module):
    """Six linear branches whose per-channel-scaled sum is one 3x3 kernel (see the module docstring).

    Build it with :meth:`from_conv`; merge it back with :meth:`to_conv`. ``branch_path``
    ("auto", or "merge" / "batch" to force every composed branch one way) sets how the
    forward pass trains; ``last_path`` says what the last forward pass did.
    """

    prior: Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        """Allocate (uninitialised) branch tensors shaped after ``conv``; use :meth:`from_conv`."""
        super().__init__()
        check_convertible(conv)
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.stride = (3, 3), (1, 1)
        self.padding, self.dilation, self.padding_mode = conv.padding, conv.dilation, "zeros"
        out, in_per_group = conv.out_channels, conv.in_channels // conv.groups
        device, dtype = conv.weight.device, conv.weight.dtype

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, device=device, dtype=dtype))

        self.weight_3x3 = param(out, in_per_group, 3, 3)
        self.weight_avg = param(out, in_per_group)
        self.weight_prior = param(out, in_per_group)
        self.register_buffer("prior", dct_prior(out, device=device, dtype=dtype))
        self.weight_id_1x1 = param(conv.in_channels, in_per_group)
        self.weight_3x3_after_1x1 = param(out, in_per_group, 3, 3)
        self.weight_3x3_extra = param(out, in_per_group, 3, 3)
        self.weight_dw = param(DW_MULTIPLIER * conv.in_channels, 1, 3, 3)
        self.weight_pw = param(out, DW_MULTIPLIER * in_per_group)
        self.branch_scales = param(NUM_BRANCHES, out)
        if conv.bias is not None:
            self.bias: nn.Parameter | None = param(out)
        else:
            self.register_parameter("bias", None)
        # What to_conv() copies to give back the original class; kept out of the module
        # tree (no parameters: they are set on the copy), so it adds nothing to state_dict.
        self.__dict__["_shell"] = _tensorless_copy(conv)
        self.__dict__["_kernel_cache"] = VersionedCache()  # the merged kernel while no branch tensor changes
        self.branch_path = "auto"  # "merge" / "batch" force every composed branch one way (tests, benchmarks)
        self.last_path = ""  # the path of the last forward pass
        self.last_shape: BlockShape | None = None  # the shape the last training forward pass chose its path for

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, init: BranchInit = "default", *, generator: torch.Generator | None = None
    ) -> OREPAConv2d:
        """A block replacing ``conv``: K0 = conv.weight, bias copied, the other branches random.

        ``init="default"`` (training from scratch) uses the scales (0.25, 0.25, 0, 0.5,
        0.05, 0.5); ``init="identity"`` uses (1, 0, 0, 0, 0, 0), so the block equals
        ``conv`` exactly while every branch still receives gradients. The random
        branch tensors follow nn.Conv2d's default init (U(+-1/sqrt(fan_in)), fan_in
        of the tensor's own convolution); W_id starts at zero, so branch 3's 1x1 is
        the identity.
        """
        if init not in ("default", "identity"):
            raise ArgumentError(f"init must be 'default' or 'identity', got {init!r}")
        block = cls(conv)
        like, ig = conv.weight, block.in_channels // block.groups
        with torch.no_grad():
            block.weight_3x3.copy_(conv.weight)
            for name, fan_in in (
                ("weight_avg", ig),
                ("weight_prior", ig),
                ("weight_3x3_after_1x1", 9 * ig),
                ("weight_3x3_extra", 9 * ig),
                ("weight_dw", 9),
                ("weight_pw", DW_MULTIPLIER * ig),
            ):
                tensor = getattr(block, name)
                tensor.copy_(_uniform(tuple(tensor.shape), fan_in, like, generator))
            block.weight_id_1x1.zero_()
            scales = DEFAULT_SCALES if init == "default" else IDENTITY_SCALES
            rows = torch.tensor(scales, dtype=like.dtype, device=like.device)[:, None]
            block.branch_scales.copy_(rows.expand(-1, block.out_channels))
            if block.bias is not None:
                block.bias.copy_(conv.bias)  # type: ignore[arg-type]
        block.train(conv.training)
        return block

    # --- the six branches ----------------------------------------------------------

    def _compose_1x1_3x3(self) -> Tensor:
        """Branch 3: K3 composed with (Id + W_id) inside each group, = K3 + K3 W_id."""
        k3 = self.weight_3x3_after_1x1
        return k3 + compose_1x1_3x3(k3, self.weight_id_1x1, self.groups)

    def _compose_dw_pw(self) -> Tensor:
        """Branch 5: kernel[o, i] = sum_k pw[o, 8 i + k] dw[8 (g0 + i) + k] inside each group."""
        return compose_dw_pw(self.weight_pw, self.weight_dw, self.groups)

    def branch_kernels(self) -> list[Tensor]:
        """The six 3x3 kernels K_b, each (O, Ig, 3, 3), before the per-channel scales."""
        shape = self.weight_3x3.shape
        return [
            self.weight_3x3,
            (self.weight_avg / 9)[:, :, None, None].expand(shape),
            self.weight_prior[:, :, None, None] * self.prior[:, None],
            self._compose_1x1_3x3(),
            self.weight_3x3_extra,
            self._compose_dw_pw(),
        ]

    def _merge_inputs(self) -> tuple[Tensor, ...]:
        """The tensors the merged kernel is made of, in :class:`~gpd.branches.merge.MergeKernel`'s order."""
        return (
            self.branch_scales,
            self.weight_3x3,
            self.weight_avg,
            self.weight_prior,
            self.prior,
            self.weight_3x3_after_1x1,
            self.weight_id_1x1,
            self.weight_3x3_extra,
            self.weight_pw,
            self.weight_dw,
        )

    def merged_kernel(self) -> Tensor:
        """K = sum_b diag(branch_scales[b]) K_b (differentiable); the bias is separate.

        Under autograd it saves only the branch tensors; without gradients it is the
        cached kernel while no branch tensor has been written since it was merged.
        """
        tensors = self._merge_inputs()
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return MergeKernel.apply(self.groups, True, True, *tensors)
        return self._cached_kernel(tensors)[0]

    def _cached_kernel(self, tensors: tuple[Tensor, ...]) -> tuple[Tensor, bool]:
        """The merged kernel without autograd, reused while every branch tensor keeps its version; (kernel, hit)."""
        cache = self._cache()
        extra = torch.is_inference_mode_enabled()  # an inference tensor must not leave inference mode
        kernel = cache.get(tensors, extra)
        if kernel is not None:
            return kernel, True
        with torch.no_grad():
            return cache.put(tensors, merge_kernel_values(tensors, self.groups, True, True), extra), False

    def _cache(self) -> VersionedCache:
        cache = self.__dict__.get("_kernel_cache")
        if cache is None:  # blocks unpickled from before the cache existed
            cache = self.__dict__["_kernel_cache"] = VersionedCache()
        return cache

    def _conv(self, x: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, kernel, bias, self.stride, self.padding, self.dilation, self.groups)

    def block_shape(self, x: Tensor) -> BlockShape:
        """What the path choice depends on for input ``x``: the channels, the groups and the positions."""
        return BlockShape(self.out_channels, self.in_channels, self.groups, x.numel() // self.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        tensors = self._merge_inputs()
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            kernel, hit = self._cached_kernel(tensors)
            self._record("cached" if hit else "merge")
            return self._conv(x, kernel, self.bias)
        self._cache().clear()  # training: the weights are about to change
        shape = self.block_shape(x)
        paths = choose_paths(shape, self.branch_path)
        self._record(paths.describe(), shape)
        kernel = MergeKernel.apply(self.groups, paths.merge_1x1, paths.merge_dw, *tensors)
        out = self._conv(x, kernel, self.bias)
        if not paths.merge_1x1:  # branch 3's W part: x -> 1x1 W -> 3x3 s3 K3 (K3 alone is in the kernel)
            inner = F.conv2d(x, self.weight_id_1x1[:, :, None, None], None, 1, 0, 1, self.groups)
            out = out + self._conv(inner, self.weight_3x3_after_1x1 * self.branch_scales[3][:, None, None, None], None)
        if not paths.merge_dw:  # branch 5: depthwise 3x3 (8 per channel), then the 1x1 s5 pw
            depthwise = F.conv2d(x, self.weight_dw, None, self.stride, self.padding, self.dilation, self.in_channels)
            pointwise = (self.weight_pw * self.branch_scales[5][:, None])[:, :, None, None]
            out = out + F.conv2d(depthwise, pointwise, None, 1, 0, 1, self.groups)
        return out

    def _record(self, path: str, shape: BlockShape | None = None) -> None:
        """Remember the path (and in training the shape) of the last forward pass (benchmarks/speed.py reports them)."""
        if not torch.compiler.is_compiling():
            self.__dict__["last_path"] = path
            if shape is not None:
                self.__dict__["last_shape"] = shape

    def to_conv(self) -> nn.Conv2d:
        """A convolution of the original class and hyper-parameters with the merged kernel and the bias.

        The sizes come from this block (an expanded block gives a wide convolution).
        """
        conv = copy.deepcopy(self.__dict__["_shell"])
        conv.in_channels, conv.out_channels, conv.groups = self.in_channels, self.out_channels, self.groups
        weight = self._cached_kernel(self._merge_inputs())[0].detach().clone()
        conv.weight = nn.Parameter(weight, requires_grad=self.weight_3x3.requires_grad)
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=self.bias.requires_grad)
        conv.train(self.training)
        return conv

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), stride=(1, 1), padding={self.padding}"
        if _pair(self.dilation) != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + f", bias={self.bias is not None}"
