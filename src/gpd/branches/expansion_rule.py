"""Inverse Reparameterization of an OREPAConv2d: D's block merges to the IR of S's kernel.

Write ``src`` for a channel map (D channel -> student channel it copies) and c(i) for
the number of copies of student input channel i. The built-in conv rule turns the
student's merged kernel K into D's kernel ``K_D[o', i'] = K[src o', src i'] / c(src i')``
(ungrouped, input expanded). Each branch is expanded so that its own kernel follows
that rule, and since the merged kernel is linear in the branch kernels with
per-output-channel scales (tiled with the output), D's merged kernel is the IR of S's.

* K0, K4, K3, A, P (output axis, input axis): tiled on the output, tiled and divided
  on the input, like a conv weight. A / 9 and P * prior inherit it (prior is tiled).
* Branch 3, ``K3 (Id + W_id)``, composes over a hidden axis m of the input's size. For
  an integer ratio r, D's 1x1 is the block-diagonal of r copies of (Id + W_id), i.e.
  ``W_D = kron(I_r, W_id)`` (not divided), and K3_D[o', m'] = K3[src o', src m'] / r.
  Then for i' in copy block b,

      sum_m' K3_D[o', m'] (Id + W_D)[m', i'] = sum_{m' in block b} K3[so, src m'] / r (Id + W)[src m', src i']
                                             = (K3 (Id + W))[so, src i'] / r,

  the IR of the composed kernel. The student reads W_id as block 0 of W_D. When the
  input is not expanded (the layer reads the image) there is one block: W_D = W_id.
* Branch 5 runs a depthwise conv with 8 filters per input channel, so its hidden axis
  has 8 I channels laid out as ``8 i + k``. Its map is ``8 src(i') + k`` (for an integer
  ratio this is the plain tile of 8 I channels, ``plan.map(8 I)``). dw (8 I, 1, 3, 3) is
  tiled with it (each filter sees one channel: not divided); pw (O, 8 I) is tiled on
  the output and tiled and divided on that axis, so
  ``sum_k pw_D[o', 8 i' + k] dw_D[8 i' + k] = (pw * dw)[so, src i'] / c(src i')``.
* Grouped blocks (groups r g): D's group j copies student group j mod g channel by
  channel (checked as for plain grouped convs), so every per-group tensor (K0, K3,
  K4, A, P, pw, and W_id's rows) is tiled on its group-indexed axis and never divided.
* branch_scales (6, O) and the bias are per output channel: tiled, not divided.

Non-integer ratios are refused for ungrouped blocks whose input is expanded: a
block-diagonal of whole copies needs every input channel copied equally often.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from gpd.branches.convert import add_branches, merge_branches
from gpd.branches.orepa import DW_MULTIPLIER, BranchInit, OREPAConv2d
from gpd.channel_maps import ChannelMap
from gpd.expansion import ExpandedLayer, LayerContext, ParamSlice, register_expansion_rule, replace_tensors
from gpd.expansion.rules import RULES
from gpd.expansion.torch_rules import check_groups, paper_bias_scale, paper_weight_scale

PER_GROUP_TENSORS = ("weight_3x3", "weight_avg", "weight_prior", "weight_3x3_after_1x1", "weight_3x3_extra")


def interleaved_map(channel_map: ChannelMap, multiplier: int = DW_MULTIPLIER) -> ChannelMap:
    """The map of an axis of ``multiplier`` channels per channel of ``channel_map`` (index ``k + multiplier * c``)."""
    offsets = torch.arange(multiplier)
    source = (channel_map.source[:, None] * multiplier + offsets).reshape(-1)
    student_index = (channel_map.student_index[:, None] * multiplier + offsets).reshape(-1)
    return ChannelMap(source=source, student_size=channel_map.student_size * multiplier, student_index=student_index)


def _whole_copies(channel_map: ChannelMap) -> int | None:
    """r when ``channel_map`` is r plain copies of the student's axis ([0..C-1] r times), else None."""
    size, student = channel_map.dynamic_size, channel_map.student_size
    if size % student or not torch.equal(channel_map.source, torch.arange(size) % student):
        return None
    return size // student


def _expand_ungrouped(
    module: OREPAConv2d, ctx: LayerContext, in_map: ChannelMap, out_map: ChannelMap
) -> tuple[dict[str, Tensor], dict[str, ParamSlice]]:
    copies = _whole_copies(in_map)
    if copies is None:
        raise ctx.error(
            module,
            f"ratio {ctx.plan.ratio} copies some input channels more often than others, so the 1x1 branch "
            "cannot be expanded as a block-diagonal of whole copies; use an integer ratio",
        )
    dw_map = interleaved_map(in_map)
    divided = 1 if ctx.expand_input else None
    scale = paper_weight_scale(in_map, out_map)  # on each branch's outer tensor, as on a conv weight
    params: dict[str, Tensor] = {}
    slices: dict[str, ParamSlice] = {}
    for name in PER_GROUP_TENSORS:
        params[name] = in_map.expand(out_map.expand(getattr(module, name), 0), 1, divide=True)
        slices[name] = ParamSlice({0: out_map, 1: in_map}, divided_dim=divided, paper_scale=scale)
    params["weight_id_1x1"] = torch.block_diag(*[module.weight_id_1x1] * copies)
    slices["weight_id_1x1"] = ParamSlice({0: in_map, 1: in_map})  # block 0, not divided
    params["weight_dw"] = dw_map.expand(module.weight_dw, 0)
    slices["weight_dw"] = ParamSlice({0: dw_map})
    params["weight_pw"] = dw_map.expand(out_map.expand(module.weight_pw, 0), 1, divide=True)
    slices["weight_pw"] = ParamSlice({0: out_map, 1: dw_map}, divided_dim=divided, paper_scale=scale)
    return params, slices


def _expand_grouped(
    module: OREPAConv2d, ctx: LayerContext, in_map: ChannelMap, out_map: ChannelMap
) -> tuple[dict[str, Tensor], dict[str, ParamSlice]]:
    dw_map = interleaved_map(in_map)
    params: dict[str, Tensor] = {}
    slices: dict[str, ParamSlice] = {}
    for name in (*PER_GROUP_TENSORS, "weight_pw"):
        params[name] = out_map.expand(getattr(module, name), 0)
        slices[name] = ParamSlice({0: out_map})
    params["weight_id_1x1"] = in_map.expand(module.weight_id_1x1, 0)
    slices["weight_id_1x1"] = ParamSlice({0: in_map})
    params["weight_dw"] = dw_map.expand(module.weight_dw, 0)
    slices["weight_dw"] = ParamSlice({0: dw_map})
    return params, slices


def expand_orepa(module: OREPAConv2d, ctx: LayerContext) -> ExpandedLayer:
    """D's block: every branch tensor expanded so that D's merged kernel is the IR of S's."""
    in_map, out_map = ctx.in_map(module.in_channels), ctx.out_map(module.out_channels)
    if module.groups == 1:
        groups = 1
        params, slices = _expand_ungrouped(module, ctx, in_map, out_map)
    else:
        groups = check_groups(module, ctx, in_map, out_map)
        params, slices = _expand_grouped(module, ctx, in_map, out_map)
    params["branch_scales"] = out_map.expand(module.branch_scales, 1)
    slices["branch_scales"] = ParamSlice({1: out_map})
    if module.bias is not None:
        params["bias"] = out_map.expand(module.bias, 0)
        slices["bias"] = ParamSlice({0: out_map}, paper_scale=paper_bias_scale(out_map) if groups == 1 else 1.0)
    new = replace_tensors(module, params, {"prior": out_map.expand(module.prior, 0)})
    new.in_channels, new.out_channels, new.groups = in_map.dynamic_size, out_map.dynamic_size, groups
    missing = {name for name, _ in module.named_parameters()} - set(slices)
    if missing:  # a programming error in this rule, not a user error
        raise AssertionError(f"expand_orepa left parameters without a ParamSlice: {sorted(missing)}")
    return ExpandedLayer(new, slices, output_map=out_map)


def _add_orepa(model: nn.Module, init: str) -> nn.Module:
    return add_branches(model, init=cast(BranchInit, init))  # from_conv refuses another init


def register_branch_rules() -> None:
    """Register, as built-ins of the rule set (idempotent): :func:`expand_orepa` for OREPAConv2d, and the
    branch kind "orepa", which ``gpd.expand(branches="orepa")`` adds and every export merges.

    The rule set runs it at the first lookup of either (declared in gpd.expansion.rules)."""
    with RULES.builtin_registrations():
        register_expansion_rule(OREPAConv2d, expand_orepa)
        RULES.register_branch_kind("orepa", _add_orepa, merge_branches)
