"""Inverse Reparameterization: build the dynamic teacher D from the student.

:func:`expand` traces the student once to find the layers that read the image and
write the logits, applies the registered rule of every layer, sets up the student as
a view of D's parameters, and checks numerically that D and the student view compute
the student's function. It never returns a D that silently differs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gpd.channel_maps import LAYOUTS, ChannelMap, Layout, WidthPlan
from gpd.choices import BranchInit, BranchKind, LayoutChoice
from gpd.errors import ArgumentError, ExpansionError, first_line
from gpd.expansion.build import build_teacher
from gpd.expansion.refusals import is_bug, refusals_only
from gpd.expansion.roles import LayerRoles, detect_roles, iter_units
from gpd.expansion.rules import RULES
from gpd.expansion.verify import locate_divergence, relative_error
from gpd.gpd_model import ExpansionReport, GPDModel
from gpd.sharing import StudentView
from gpd.sharing.steps import paper_scales


def infer_input_size(model: nn.Module) -> tuple[int, ...]:
    """A plausible per-sample input size (C, H, W).

    Channels come from the first convolution; the spatial size from how the model was
    built (``img_size`` in gpd's model spec, a timm patch embedding), else timm's
    default config, else 32 x 32 (enough for any CNN with global pooling).
    """
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    cfgs = (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None))
    cfg = next((c for c in cfgs if isinstance(c, dict)), {})
    cfg_size = tuple(cfg.get("input_size") or ())
    channels = first_conv.in_channels if first_conv is not None else (cfg_size[0] if cfg_size else None)
    if channels is None:
        raise ExpansionError(
            f"cannot tell the input size of {type(model).__name__}; pass example_input= or input_size=(C, H, W)"
        )
    spec_size = (getattr(model, "gpd_spec", None) or {}).get("kwargs", {}).get("img_size")
    patch_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    for size in (spec_size, patch_size, cfg_size[1:] if cfg_size else None):
        if size:
            height, width = (size, size) if isinstance(size, int) else tuple(size)
            return (channels, int(height), int(width))
    return (channels, 32, 32)


def _example(model: nn.Module, example_input: Any, input_size: tuple[int, ...] | None, batch: int = 2) -> tuple:
    if example_input is not None:
        return example_input if isinstance(example_input, tuple) else (example_input,)
    size = tuple(input_size) if input_size is not None else infer_input_size(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return (torch.randn((batch, *size), generator=generator).to(device),)


MEASURE_EXTRA, CHECK_EXTRA = 6, 2  # random samples added to the example: to measure layouts, to verify


def with_extra_samples(example: tuple, extra: int, seed: int) -> tuple:
    """``example`` with ``extra`` random samples of the same per-sample shape, mean and std appended.

    Two samples rarely tell every channel apart: a ReLU leaves some all zero (dead on
    the example, alive on other inputs), and equal channels cannot be told copy from
    copy. Layouts are measured on more samples, and verification adds samples the
    measurement never saw, so a wrong guess among equal channels is refused, not kept.
    Only an example made of float tensors of one batch size is extended.
    """
    tensors = [t for t in example if isinstance(t, torch.Tensor)]
    if not tensors or len(tensors) != len(example) or any(not t.is_floating_point() or t.ndim < 1 for t in tensors):
        return example
    if len({t.shape[0] for t in tensors}) != 1:
        return example
    generator = torch.Generator().manual_seed(seed)
    extended = []
    for t in tensors:
        noise = torch.randn((extra, *t.shape[1:]), generator=generator, dtype=t.dtype).to(t.device)
        std = t.std() if t.numel() > 1 else torch.ones((), dtype=t.dtype)
        extended.append(torch.cat([t, noise * std + t.mean()], 0))
    return tuple(extended)


def add_symmetry_noise(model: GPDModel, std: float, generator: torch.Generator | None = None) -> None:
    """Add noise of relative size ``std`` to D's copies, leaving the student's own entries unchanged.

    The copies get identical gradients from D's own loss; only copy 0 is also moved by
    the student's loss, so without noise copies 1..r-1 stay identical for ever (at
    r >= 3 D keeps two distinct copies). Each tensor gets N(0, (std * rms)^2), where
    rms is the root mean square of that tensor: the same relative perturbation for
    a stem of large weights and a head of small ones; a tensor of zeros (a bias at
    its initial value) stays exact. The student's function is unchanged.
    """
    params = dict(model.dynamic.named_parameters())
    with torch.no_grad():
        for name, param_slice in model.student.slices.items():
            param = params[name]
            rms = float(param.double().pow(2).mean().sqrt()) if param.numel() else 0.0
            if rms == 0.0:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype) * (std * rms)
            noise[param_slice.student_mask(param.shape)] = 0
            param.add_(noise.to(param.device))


# float64 rounding amplified by deep nets with random statistics (1e-8 measured), far below a wrong layout's
FLOAT64_TOLERANCE = 1e-6


def run_or_explain(who: str, modules: nn.Module, run: Callable[..., Any], example: tuple) -> Any:
    """Run ``run(*example)``; if the model fails, raise ExpansionError naming the layer that failed
    (a bug of gpd's or of a rule propagates unchanged: :mod:`gpd.expansion.refusals`)."""
    current: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda mod, args, name=name: current.append(name))
        for name, module, _ in iter_units(modules)
    ]
    try:
        return run(*example)
    except Exception as err:
        if is_bug(err, below_call_site=True):
            raise
        where = f" in layer '{current[-1]}'" if current else ""
        raise ExpansionError(
            f"the {who} fails to run{where}: {first_line(err)}; the model probably mixes channels in a functional op "
            "that has no expansion rule"
        ) from err
    finally:
        for handle in handles:
            handle.remove()


def _measure(student: nn.Module, model: GPDModel, example: tuple) -> tuple[float, float]:
    """Relative errors of D and of the student view against ``student`` (eval mode, no grad)."""
    with torch.no_grad():
        expected = student(*example)
        teacher = run_or_explain("dynamic teacher", model.dynamic, model.forward_dynamic, example)
        view = run_or_explain("shared-parameter student", model.student.module, model.forward_student, example)
    return relative_error(teacher, expected), relative_error(view, expected)


def _raise_mismatch(
    student: nn.Module,
    model: GPDModel,
    example: tuple,
    output_maps: dict[str, ChannelMap],
    errors: tuple[float, float],
    tolerance: float,
) -> None:
    for who, error, modules, run in (
        ("dynamic teacher", errors[0], model.dynamic, lambda: model.forward_dynamic(*example)),
        ("shared-parameter student", errors[1], model.student.module, lambda: model.forward_student(*example)),
    ):
        if error > tolerance:
            where = locate_divergence(student, modules, run, example, output_maps, tolerance, model.plan)
            detail = where.describe() if where else "no single layer differs (check functional ops in forward)"
            measured = "a different output shape" if error == float("inf") else f"relative error {error:.2e}"
            raise ExpansionError(
                f"the {who} does not compute the student's function at ratio {model.ratio} "
                f"({measured} > {tolerance:.0e}), {detail}; channel concatenation, split or shuffle in "
                "forward() breaks the copy layout, and a layer that reads the input or writes the output "
                "through a functional op can be named with input_layers= or output_layers="
            )


LAYER_SCALE_MAX = 1e-4  # a per-channel vector initialised this small (1e-6, 1e-5) and nowhere zero is a layer scale


def with_unit_layer_scales(
    student: nn.Module, model: GPDModel, teacher64: nn.Module | None
) -> tuple[nn.Module, GPDModel, nn.Module | None] | None:
    """Copies of the student and of D whose layer scales are one; None when there are none.

    A residual branch scaled by 1e-6 (ConvNeXt, CaiT, EdgeNeXt at initialisation) adds
    1e-6 of its output: a wrong expansion of that branch hides below any tolerance, and
    shows once training grows the scale. A vector of ones is a copy of ones in any
    layout, so D stays the expansion of the student with every branch at full weight.
    """
    slices = model.student.slices
    names = [
        name for name, p in ((n, q.detach()) for n, q in student.named_parameters())
        if p.ndim == 1 and p.numel() > 1 and bool((p != 0).all()) and float(p.abs().max()) <= LAYER_SCALE_MAX
        and name in slices and slices[name].divided_dim is None
    ]  # fmt: skip
    if not names:
        return None
    student, model = copy.deepcopy(student), copy.deepcopy(model)
    teacher64 = copy.deepcopy(teacher64) if teacher64 is not None else None
    with torch.no_grad():
        for module in (student, model.dynamic, teacher64):
            if module is not None:
                params = dict(module.named_parameters())
                for name in names:
                    params[name].fill_(1.0)
    return student, model, teacher64


def verify(
    student: nn.Module,
    model: GPDModel,
    example: tuple,
    output_maps: dict[str, ChannelMap],
    tolerance: float,
    teacher64: nn.Module | None = None,
) -> tuple[float, float, bool]:
    """:func:`verify_once`, then again with every layer scale at one (:func:`with_unit_layer_scales`)."""
    result = verify_once(student, model, example, output_maps, tolerance, teacher64)
    unit = with_unit_layer_scales(student, model, teacher64)
    if unit is not None:
        verify_once(unit[0], unit[1], example, output_maps, tolerance, unit[2])
    return result


def verify_once(
    student: nn.Module,
    model: GPDModel,
    example: tuple,
    output_maps: dict[str, ChannelMap],
    tolerance: float,
    teacher64: nn.Module | None = None,
) -> tuple[float, float, bool]:
    """Relative errors of D and of the student view, and whether float64 settled it; raise on mismatch.

    Deep float32 networks accumulate rounding differences between a sum over C
    channels and a sum over r * C halves. When the float32 errors exceed
    ``tolerance``, the check is repeated on float64 copies, with D's values taken
    from ``teacher64`` (D as built in float64, before ``W / r`` was rounded to
    float32) when given: an exact mapping then agrees to ~1e-12 and is accepted (the
    float32 errors are still reported); a wrong one is located and refused.
    """
    modes = (student.training, model.training)
    student.eval()
    model.eval()
    try:
        errors = _measure(student, model, example)
        if max(errors) <= tolerance:
            return (*errors, False)
        student64, model64 = copy.deepcopy(student).double(), copy.deepcopy(model).double()
        if teacher64 is not None:
            model64.dynamic.load_state_dict(teacher64.state_dict())
        example64 = tuple(t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in example)
        errors64 = _measure(student64, model64, example64)
        if max(errors64) <= FLOAT64_TOLERANCE:
            return (*errors, True)
        _raise_mismatch(student64, model64, example64, output_maps, errors64, min(tolerance, FLOAT64_TOLERANCE))
        raise AssertionError("unreachable: _raise_mismatch raises")
    finally:
        student.train(modes[0])
        model.train(modes[1])


def with_branches(model: nn.Module, branches: BranchKind | None, branch_init: BranchInit) -> nn.Module:
    """``model`` with multi-branch blocks added as asked (a copy), or ``model`` itself."""
    if branches in (None, "none"):
        return model
    kind = RULES.branch_kind(branches)
    if kind is None:  # RULES loads gpd's own kinds ("orepa") at their first lookup
        names = " or ".join(repr(name) for name in [*RULES.branch_kinds, "none"])
        raise ArgumentError(f"branches must be {names}, got {branches!r}")
    return kind.add(model, branch_init)


@refusals_only
def expand(
    model: nn.Module,
    ratio: float = 2,
    *,
    example_input: Any = None,
    input_size: tuple[int, ...] | None = None,
    input_layers: list[str] | None = None,
    output_layers: list[str] | None = None,
    noise_std: float = 0.0,
    tolerance: float = 1e-4,
    check: bool = True,
    branches: BranchKind | None = None,
    branch_init: BranchInit = "default",
    compensate_step: bool = False,
    layout: LayoutChoice = "auto",
) -> GPDModel:
    """Build the dynamic teacher of ``model`` at width ``ratio`` and share its parameters.

    Args:
        model: the student; it is not modified (the result holds copies).
        ratio: D's width relative to the student's (>= 1; non-integer ratios replicate
            channels Net2Net-style where that is exact).
        example_input / input_size: an input, or its per-sample size (C, H, W), used
            to trace the model and verify the expansion; inferred when omitted.
        input_layers / output_layers: override the detected layers that read the
            input and write the output (names from ``model.named_modules()``).
        noise_std: symmetry-breaking noise added to D's copies after verification,
            relative to each tensor's RMS (0 = exact copies; training with
            :class:`gpd.Distiller` uses 1e-3 by default). The student is unchanged;
            ``report.noise_error`` is D's measured departure from the student.
        tolerance: largest relative error accepted by the verification.
        check: verify numerically (eval mode) and raise ExpansionError on mismatch.
        branches: "orepa" turns every 3x3 stride-1 convolution of the student into a
            six-branch block first (Channel-Branch Reparameterization); None or
            "none" keeps the student as it is. Exports merge the blocks back.
        branch_init: "default" (training from scratch) or "identity" (each block starts
            equal to its convolution: for a pretrained student).
        compensate_step: the step rule. False (the default): every tensor of D, and so
            of the student, takes the SGD step it takes in the paper's parameterisation
            (gradient hooks on D's stem, head, biases and tokens; see
            :mod:`gpd.sharing.steps`). True: the plain networks' steps everywhere: D
            steps as the plain wide network it is, and the student's gradient reaches
            D's divided tensors divided by r instead of multiplied, so the student
            steps as the unexpanded student would (docs/method.md, "Per-layer steps").
        layout: how D lays out the copies of a channel: "tiled" (``[h, h]``, the
            student's tensors are a prefix of D's), "interleaved" (each channel's
            copies side by side: what a ``forward()`` that splits or slices channels
            needs), or "auto" (the default): tiled, else interleaved where only that
            one is exact (docs/method.md, "Channel layouts").
    """
    if layout not in ("auto", *LAYOUTS):
        raise ArgumentError(f"layout must be 'auto', {', '.join(repr(x) for x in LAYOUTS)}; got {layout!r}")
    layouts: list[Layout] = ["tiled", "interleaved"] if layout == "auto" else [layout]  # checked above
    plans = [WidthPlan(ratio, name) for name in layouts]
    example = _example(model, example_input, input_size)  # before branches hide the stem conv
    model = with_branches(model, branches, branch_init)
    roles = detect_roles(model, example, input_layers, output_layers)
    refusals: list[ExpansionError] = []
    for plan in plans:
        try:
            return _expand_with_plan(model, plan, roles, example, noise_std, tolerance, check, compensate_step)
        except ExpansionError as err:
            refusals.append(err)
    if len(refusals) == 1:
        raise refusals[0]
    raise ExpansionError(
        f"{refusals[0]} (the interleaved layout is refused too: {first_line(refusals[1])[:300]})"
    ) from refusals[0]


def _expand_with_plan(
    model: nn.Module,
    plan: WidthPlan,
    roles: LayerRoles,
    example: tuple,
    noise_std: float,
    tolerance: float,
    check: bool,
    compensate_step: bool,
) -> GPDModel:
    """:func:`expand` in one layout: build D, share, verify, add the noise."""
    probe = with_extra_samples(example, MEASURE_EXTRA, seed=1)
    teacher, slices, output_maps, rules_used, teacher64 = build_teacher(model, plan, roles, probe)
    del probe
    missing = [name for name, _ in model.named_parameters() if name not in slices]
    if missing:
        raise ExpansionError(
            f"no expansion rule covers the parameters {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            "register a rule for their layer"
        )
    named = roles.input_layers | roles.output_layers
    unverified = sorted(n for n in roles.unused - named if any(True for _ in model.get_submodule(n).parameters()))
    if unverified:
        warnings.warn(
            f"layers never called on the example input were expanded on both sides without verification: "
            f"{', '.join(unverified)} (a train-only head? name it with output_layers=)",
            stacklevel=2,
        )
    report = ExpansionReport(ratio=plan.ratio, roles=roles, rules_used=rules_used, layout=plan.layout)
    scales = {} if compensate_step else paper_scales(slices, teacher)
    gpd_model = GPDModel(teacher, StudentView(model, slices, compensate_step), plan, report, paper_scales=scales)
    gpd_model.train(model.training)
    if check:  # the rules must be exact; the noise below is a deliberate, reported departure
        report.dynamic_error, report.student_error, report.checked_in_float64 = verify(
            model, gpd_model, with_extra_samples(example, CHECK_EXTRA, seed=2), output_maps, tolerance, teacher64
        )
    del teacher64
    if noise_std:
        add_symmetry_noise(gpd_model, noise_std)
        report.noise_std = noise_std
        if check:
            report.noise_error, _, _ = verify(model, gpd_model, example, output_maps, float("inf"))
    return gpd_model
