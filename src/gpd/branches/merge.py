"""The merged kernel of a six-branch block as one autograd function, with its analytic backward.

Why a function of its own (docs/branches.md, "Training cost"): built from ordinary ops, the
merge saves every intermediate kernel for the backward (the composed branches 3 and 5, the
products with the scales), i.e. several tensors the size of the kernel per block, and
torch's einsum runs the two compositions with layout copies per batch entry. Here the
forward computes the kernel without autograd and saves only its inputs (parameters or the
student's views of them: no new memory); the backward writes each input's gradient from
the kernel's gradient G with the formulas below (float64 tests against autograd of the
plain expressions in tests/branches/test_branch_paths.py).

With s_b = branch_scales[b] (per output channel o), K = sum_b s_b K_b and G = dL/dK:

* b0, b4 (K0, K4): dK = s G, ds = sum_{i,t} K G.
* b1 (A / 9 on every tap): dA = s1 sum_t G / 9, ds1 = sum_i A sum_t G / 9.
* b2 (P times the fixed prior): dP = s2 sum_t G prior, ds2 = sum_i P sum_t G prior.
* b3 (K3 (Id + W), W mixing the hidden axis m inside each group): with H = G W^T (over i),
  dK3 = s3 (G + H), ds3 = sum K3 (G + H), dW = K3^T (s3 G) (over o and the taps).
  When the block runs W's part on the batch (``compose_1x1=False``), only the identity part
  K3 is in the kernel and H is left out.
* b5 (sum_k pw[o, 8 i + k] dw[8 i + k]): with Q[o, i, k] = sum_t G[o, i, t] dw[i, k, t],
  dpw = s5 Q, ds5 = sum_{i, k} pw Q, ddw[i, k, t] = sum_o pw[o, i, k] s5[o] G[o, i, t].

The compositions use the kernel's (O, 3, 3, I) layout, which is channels_last for a 4-D
kernel, so branch 3 is one matrix product per group without copying a channels_last K3.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

DW_MULTIPLIER = 8  # depthwise filters per input channel in branch 5 (as in orepa.py)


# --- branch 3: K3 composed with the inner 1x1 W (the identity part is K3 itself) ---------------


def _taps_last(kernel: Tensor, groups: int) -> Tensor:
    """(O, Ig, 3, 3) -> (g, Og * 9, Ig): rows (o, tap), columns the input channel inside the group."""
    out, ig = kernel.shape[0], kernel.shape[1]
    return kernel.permute(0, 2, 3, 1).reshape(groups, out // groups * 9, ig)


def _from_taps_last(rows: Tensor, out: int, ig: int) -> Tensor:
    """Inverse of :func:`_taps_last`: an (O, Ig, 3, 3) view (channels_last strides)."""
    return rows.reshape(out, 3, 3, ig).permute(0, 3, 1, 2)


def compose_1x1_3x3(k3: Tensor, w_id: Tensor, groups: int) -> Tensor:
    """sum_m K3[o, m, t] W[g0 + m, i] inside each group: branch 3's kernel minus its identity part K3."""
    ig = k3.shape[1]
    mixed = torch.bmm(_taps_last(k3, groups), w_id.reshape(groups, ig, ig))
    return _from_taps_last(mixed, k3.shape[0], ig)


def _compose_1x1_3x3_adjoint(grad: Tensor, w_id: Tensor, groups: int) -> Tensor:
    """H[o, m, t] = sum_i G[o, i, t] W[g0 + m, i]: the gradient of :func:`compose_1x1_3x3` in K3."""
    ig = grad.shape[1]
    mixed = torch.bmm(_taps_last(grad, groups), w_id.reshape(groups, ig, ig).transpose(1, 2))
    return _from_taps_last(mixed, grad.shape[0], ig)


# --- branch 5: depthwise 3x3 (8 filters per input channel) then grouped 1x1 -------------------


def _pw_by_input(pw: Tensor, groups: int) -> Tensor:
    """(O, 8 Ig) -> (g Ig, Og, 8): one (Og x 8) matrix per input channel (a view when g = 1 or Og = 1)."""
    out, ig = pw.shape[0], pw.shape[1] // DW_MULTIPLIER
    og = out // groups
    return pw.reshape(groups, og, ig, DW_MULTIPLIER).transpose(1, 2).reshape(groups * ig, og, DW_MULTIPLIER)


def _kernel_by_input(kernel: Tensor, groups: int) -> Tensor:
    """(O, Ig, 3, 3) -> (g Ig, Og, 9), the layout of :func:`_pw_by_input`."""
    out, ig = kernel.shape[0], kernel.shape[1]
    og = out // groups
    return kernel.reshape(groups, og, ig, 9).transpose(1, 2).reshape(groups * ig, og, 9)


def _by_input_to_kernel(rows: Tensor, out: int, ig: int, groups: int, last: int) -> Tensor:
    """Inverse of the by-input layouts: (g Ig, Og, last) -> (O, Ig, last) (a strided view when g = 1)."""
    og = out // groups
    return rows.reshape(groups, ig, og, last).transpose(1, 2).reshape(out, ig, last)


def _compose_dw_pw_by_input(pw: Tensor, dw: Tensor, groups: int) -> Tensor:
    """Branch 5's kernel in the by-input layout (g Ig, Og, 9): one (Og x 8) by (8 x 9) product per input channel."""
    return torch.bmm(_pw_by_input(pw, groups), dw.reshape(-1, DW_MULTIPLIER, 9))


def compose_dw_pw(pw: Tensor, dw: Tensor, groups: int) -> Tensor:
    """Branch 5's kernel: sum_k pw[o, 8 i + k] dw[8 (g0 + i) + k], one small matrix product per input channel."""
    out, ig = pw.shape[0], pw.shape[1] // DW_MULTIPLIER
    per_input = _compose_dw_pw_by_input(pw, dw, groups)
    return _by_input_to_kernel(per_input, out, ig, groups, 9).reshape(out, ig, 3, 3)


def _kernel_rows(kernel: Tensor) -> Tensor | None:
    """An ungrouped channels_last kernel (O, I, 3, 3) as its (O * 9, I) memory, else None.

    In that layout the by-input layout (I, O, 9) of branch 5 is the plain transpose of
    this matrix, and torch copies a transposed matrix block by block, about 8 times as fast
    as the strided copy of the 3-D view (measured on a 1024-channel kernel: 60 -> 8 ms).
    """
    rows = kernel.permute(0, 2, 3, 1)
    if not rows.is_contiguous():
        return None
    return rows.view(kernel.shape[0] * 9, kernel.shape[1])


def _add_dw_pw(kernel: Tensor, pw: Tensor, dw: Tensor, groups: int, scale_row: Tensor) -> None:
    """kernel += diag(s5) K5, through one transposing copy when the kernel is ungrouped channels_last."""
    rows = _kernel_rows(kernel) if groups == 1 else None
    if rows is None:
        kernel.addcmul_(compose_dw_pw(pw, dw, groups), _channel(scale_row))
        return
    per_input = _compose_dw_pw_by_input(pw, dw, groups)  # (I, O, 9)
    composed = torch.empty_like(rows).copy_(per_input.view(rows.shape[1], rows.shape[0]).t())
    rows.addcmul_(composed, scale_row.repeat_interleave(9)[:, None])


def _by_input_copy(grad: Tensor, groups: int, work: Tensor) -> Tensor:
    """The kernel gradient in the by-input layout (g Ig, Og, 9), copied into ``work`` (contiguous)."""
    rows = _kernel_rows(grad) if groups == 1 else None
    out, ig = grad.shape[0], grad.shape[1]
    if rows is not None:
        return work.view(ig, out * 9).copy_(rows.t()).view(ig, out, 9)
    strided = _kernel_by_input(grad, groups)
    return work.view(strided.shape).copy_(strided)


# --- the whole merge ------------------------------------------------------------------------


def _channel(scale_row: Tensor) -> Tensor:
    return scale_row[:, None, None, None]


def merge_kernel_values(tensors: tuple[Tensor, ...], groups: int, compose_1x1: bool, compose_dw: bool) -> Tensor:
    """K = sum_b diag(s_b) K_b without autograd; branch 3's W part and branch 5 only when asked.

    ``tensors``: (branch_scales, K0, A, P, prior, K3, W_id, K4, pw, dw). The kernel takes
    K0's memory layout. It is built in one buffer (a new tensor of the kernel's size costs
    about as much as the arithmetic on it: fresh pages), starting from s3 K3 (Id + W) or s3 K3.
    """
    scales, k0, avg, prior_w, prior, k3, w_id, k4, pw, dw = tensors
    out, ig = k3.shape[0], k3.shape[1]
    kernel = torch.empty_like(k0)  # K0's layout: that of the plain convolution's weight
    if compose_1x1:
        rows = _taps_last(k3, groups)
        kernel_rows = kernel.permute(0, 2, 3, 1)
        if kernel_rows.is_contiguous():  # channels_last: the product is written straight into the kernel
            torch.baddbmm(rows, rows, w_id.reshape(groups, ig, ig), out=kernel_rows.view(rows.shape))
        else:
            kernel.copy_(_from_taps_last(torch.baddbmm(rows, rows, w_id.reshape(groups, ig, ig)), out, ig))
        kernel.mul_(_channel(scales[3]))
    else:
        torch.mul(k3, _channel(scales[3]), out=kernel)
    kernel.addcmul_(k0, _channel(scales[0]))
    kernel.addcmul_(k4, _channel(scales[4]))
    kernel.add_((avg * (scales[1][:, None] / 9))[:, :, None, None])
    kernel.addcmul_((prior_w * scales[2][:, None])[:, :, None, None], prior[:, None])
    if compose_dw:
        _add_dw_pw(kernel, pw, dw, groups, scales[5])
    return kernel


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum over every axis but the first of a * b, without a temporary when a and b share a layout."""
    if a.stride() == b.stride() and a.shape == b.shape:
        strides = a.stride()
        order = sorted(range(a.ndim), key=lambda d: -strides[d] if a.shape[d] > 1 else 0)
        if order[0] == 0 or a.shape[0] == 1:
            fa, fb = a.permute(order), b.permute(order)
            if fa.is_contiguous() and fb.is_contiguous():
                n = a.shape[0]
                return torch.bmm(fa.reshape(n, 1, -1), fb.reshape(n, -1, 1)).reshape(n)
    return (a * b).flatten(1).sum(1)


def _scaled_like(like: Tensor, grad: Tensor, scale_row: Tensor) -> Tensor:
    """``grad * scale`` per output channel, written in ``like``'s layout (a parameter's gradient)."""
    return torch.mul(grad, _channel(scale_row), out=torch.empty_like(like))


class MergeKernel(torch.autograd.Function):
    """Differentiable merge that saves only its inputs (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, groups: int, compose_1x1: bool, compose_dw: bool, *tensors: Tensor) -> Tensor:
        ctx.groups, ctx.compose_1x1, ctx.compose_dw = groups, compose_1x1, compose_dw
        ctx.save_for_backward(*tensors)
        with torch.autocast(tensors[1].device.type, enabled=False):
            return merge_kernel_values(tensors, groups, compose_1x1, compose_dw)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        with torch.autocast(grad.device.type, enabled=False):
            grads = _merge_backward(
                ctx.saved_tensors, grad, ctx.groups, ctx.compose_1x1, ctx.compose_dw, ctx.needs_input_grad[3:]
            )
        return (None, None, None, *grads)


def _merge_backward(
    tensors: tuple[Tensor, ...], grad: Tensor, groups: int, compose_1x1: bool, compose_dw: bool, needs: tuple[bool, ...]
) -> list[Tensor | None]:
    """The input gradients of :func:`merge_kernel_values` (formulas in the module docstring).

    Besides the gradients themselves it allocates one work tensor of the kernel's size.
    """
    scales, k0, avg, prior_w, prior, k3, w_id, k4, pw, dw = tensors
    out, ig = k0.shape[0], k0.shape[1]
    want_scales = needs[0]
    d_scales = torch.zeros_like(scales) if want_scales else None
    result: list[Tensor | None] = [d_scales, None, None, None, None, None, None, None, None, None]

    for index, branch, tensor in ((1, 0, k0), (7, 4, k4)):  # K0, K4
        if needs[index]:
            result[index] = _scaled_like(tensor, grad, scales[branch])
        if d_scales is not None:
            d_scales[branch] = _channel_dot(tensor, grad)

    by_tap = grad.reshape(out, ig, 9)  # a view for contiguous and channels_last kernels
    tap_sum = by_tap.sum(2)  # (O, Ig)
    prior_sum = torch.bmm(by_tap, prior.reshape(out, 9, 1)).reshape(out, ig)
    if needs[2]:
        result[2] = tap_sum * (scales[1][:, None] / 9)
    if needs[3]:
        result[3] = prior_sum * scales[2][:, None]
    if d_scales is not None:
        d_scales[1] = (avg * tap_sum).sum(1) / 9
        d_scales[2] = (prior_w * prior_sum).sum(1)

    work = torch.empty(out * ig * 9, dtype=grad.dtype, device=grad.device) if needs[6] or compose_dw else None
    if compose_1x1:
        g_rows = _taps_last(grad, groups)
        w = w_id.reshape(groups, ig, ig)
        unscaled = _from_taps_last(torch.baddbmm(g_rows, g_rows, w.transpose(1, 2)), out, ig)  # G + H
        if d_scales is not None:
            d_scales[3] = _channel_dot(k3, unscaled)
        if needs[6]:
            scaled_k3 = torch.mul(k3, _channel(scales[3]), out=_from_taps_last(work, out, ig))  # type: ignore[arg-type]
            result[6] = torch.bmm(_taps_last(scaled_k3, groups).transpose(1, 2), g_rows).reshape(w_id.shape)
        if needs[5]:
            result[5] = unscaled.mul_(_channel(scales[3]))
    else:
        if needs[5]:
            result[5] = _scaled_like(k3, grad, scales[3])
        if d_scales is not None:
            d_scales[3] = _channel_dot(k3, grad)

    if compose_dw and (needs[8] or needs[9] or want_scales):
        # one transposing copy: bmm would otherwise copy each of the g Ig strided matrices separately
        by_input = _by_input_copy(grad, groups, work)  # type: ignore[arg-type]  # (g Ig, Og, 9)
        q = torch.bmm(by_input, dw.reshape(-1, DW_MULTIPLIER, 9).transpose(1, 2))  # (g Ig, Og, 8): Q
        q_as_pw = _by_input_to_kernel(q, out, ig, groups, DW_MULTIPLIER).reshape(out, ig * DW_MULTIPLIER)
        unscaled_pw = torch.empty_like(pw).copy_(q_as_pw)  # Q in pw's layout
        if d_scales is not None:
            d_scales[5] = _channel_dot(pw, unscaled_pw)
        if needs[8]:
            result[8] = unscaled_pw.mul_(scales[5][:, None])
        if needs[9]:
            s5 = scales[5].reshape(groups, 1, -1, 1)  # (g, 1, Og, 1) against (g, Ig, Og, 9)
            by_input.view(groups, ig, -1, 9).mul_(s5)
            result[9] = torch.bmm(_pw_by_input(pw, groups).transpose(1, 2), by_input).reshape(dw.shape)
    return result
