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
from torch.utils._pytree import tree_leaves

from gpd.channel_maps import LAYOUTS, ChannelMap, Layout, WidthPlan
from gpd.choices import BranchInit, LayoutChoice, StepRule, check_choice
from gpd.deprecated import COMPENSATE_STEP_RULES, renamed_value_kwargs
from gpd.errors import ArgumentError, ExpansionError, first_line
from gpd.expansion.build import build_dynamic, cast_copy
from gpd.expansion.examples import CHECK_EXTRA, MEASURE_EXTRA, example_of, with_extra_samples
from gpd.expansion.examples import infer_input_size as infer_input_size  # its old home (gpd.cli imports it here)
from gpd.expansion.generic import ambiguity_of, chosen_axes
from gpd.expansion.model import ExpansionReport, GPDModel
from gpd.expansion.refusals import is_bug, refusals_only
from gpd.expansion.roles import LayerRoles, detect_roles, iter_units
from gpd.expansion.rules import RULES
from gpd.expansion.verify import locate_divergence, output_tensors, relative_error
from gpd.inputs import ModelInput
from gpd.sharing import StudentView
from gpd.sharing.steps import paper_scales


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


def run_or_explain(who: str, modules: nn.Module, run: Callable[..., Any], example: ModelInput) -> Any:
    """Run ``run`` on ``example``; if the model fails, raise ExpansionError naming the layer that failed
    (a bug of gpd's or of a rule propagates unchanged: :mod:`gpd.expansion.refusals`)."""
    current: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda mod, args, name=name: current.append(name))
        for name, module, _ in iter_units(modules)
    ]
    try:
        return example.call(run)
    except Exception as err:
        if isinstance(err, ExpansionError) or is_bug(err, below_call_site=True):
            raise  # a rule's refusal, raised while D runs (lazy layers), names its own layer and reason
        where = f" in layer '{current[-1]}'" if current else ""
        raise ExpansionError(
            f"the {who} fails to run{where}: {first_line(err)}; the model probably mixes channels in a functional op "
            "that has no expansion rule"
        ) from err
    finally:
        for handle in handles:
            handle.remove()


def _measure(student: nn.Module, model: GPDModel, example: ModelInput) -> tuple[float, float]:
    """Relative errors of D and of the student view against ``student`` (eval mode, no grad)."""
    with torch.no_grad():
        expected = example.call(student)
        if any(bool(t.isnan().any()) for t in output_tensors(expected)):
            raise ExpansionError(
                "the model's output on the example input holds NaN, so the expansion cannot be verified; "
                "check the model's weights or pass another example_input"
            )
        dynamic = run_or_explain("dynamic teacher", model.dynamic, model.forward_dynamic, example)
        view = run_or_explain("shared-parameter student", model.student.module, model.forward_student, example)
    return relative_error(dynamic, expected), relative_error(view, expected)


def _raise_mismatch(
    student: nn.Module,
    model: GPDModel,
    example: ModelInput,
    output_maps: dict[str, ChannelMap],
    errors: tuple[float, float],
    tolerance: float,
) -> None:
    for who, error, modules, run in (
        ("dynamic teacher", errors[0], model.dynamic, lambda: example.call(model.forward_dynamic)),
        ("shared-parameter student", errors[1], model.student.module, lambda: example.call(model.forward_student)),
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
    student: nn.Module, model: GPDModel, dynamic64: nn.Module | None
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
    dynamic64 = copy.deepcopy(dynamic64) if dynamic64 is not None else None
    with torch.no_grad():
        for module in (student, model.dynamic, dynamic64):
            if module is not None:
                params = dict(module.named_parameters())
                for name in names:
                    params[name].fill_(1.0)
    return student, model, dynamic64


def verify(
    student: nn.Module,
    model: GPDModel,
    example: ModelInput,
    output_maps: dict[str, ChannelMap],
    tolerance: float,
    dynamic64: nn.Module | None = None,
) -> tuple[float, float, bool]:
    """:func:`verify_once`, then again with every layer scale at one (:func:`with_unit_layer_scales`)."""
    result = verify_once(student, model, example, output_maps, tolerance, dynamic64)
    unit = with_unit_layer_scales(student, model, dynamic64)
    if unit is not None:
        verify_once(unit[0], unit[1], example, output_maps, tolerance, unit[2])
    return result


def verify_once(
    student: nn.Module,
    model: GPDModel,
    example: ModelInput,
    output_maps: dict[str, ChannelMap],
    tolerance: float,
    dynamic64: nn.Module | None = None,
) -> tuple[float, float, bool]:
    """Relative errors of D and of the student view, and whether float64 settled it; raise on mismatch.

    Deep float32 networks accumulate rounding differences between a sum over C
    channels and a sum over r * C halves. When the float32 errors exceed
    ``tolerance``, the check is repeated on float64 copies, with D's values taken
    from ``dynamic64`` (D as built in float64, before ``W / r`` was rounded to
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
        student64, model64 = cast_copy(student, torch.float64), cast_copy(model, torch.float64)
        if dynamic64 is not None:
            model64.dynamic.load_state_dict(dynamic64.state_dict())
        example64 = example.map_floats(torch.Tensor.double)
        errors64 = _measure(student64, model64, example64)
        if max(errors64) <= FLOAT64_TOLERANCE:
            return (*errors, True)
        _raise_mismatch(student64, model64, example64, output_maps, errors64, min(tolerance, FLOAT64_TOLERANCE))
        raise AssertionError("unreachable: _raise_mismatch raises")
    finally:
        student.train(modes[0])
        model.train(modes[1])


def with_branches(model: nn.Module, branches: str | None, branch_init: BranchInit) -> nn.Module:
    """``model`` with the blocks of the registered branch kind ``branches`` added (a copy), or ``model`` itself."""
    if branches in (None, "none"):
        return model
    kind = RULES.branch_kind(branches)
    if kind is None:  # RULES loads gpd's own kinds ("orepa") at their first lookup
        names = " or ".join(repr(name) for name in [*RULES.branch_kinds, "none"])
        raise ArgumentError(f"branches must be {names}, got {branches!r}")
    return kind.add(model, branch_init)


@renamed_value_kwargs("compensate_step", "step_rule", COMPENSATE_STEP_RULES)  # the old boolean (one release)
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
    branches: str | None = None,
    branch_init: BranchInit = "default",
    step_rule: StepRule = "paper",
    layout: LayoutChoice = "auto",
) -> GPDModel:
    """Build the dynamic teacher of ``model`` at width ``ratio`` and share its parameters.

    Args:
        model: the student; it is not modified (the result holds copies).
        ratio: D's width relative to the student's (>= 1; non-integer ratios replicate
            channels Net2Net-style where that is exact).
        example_input / input_size: an input, or its per-sample size (C, H, W), used
            to trace the model and verify the expansion; inferred when omitted. A mapping
            (``input_ids``, ``attention_mask``, ``pixel_values``, ...) is passed as keyword
            arguments, as transformers models take it; its attention mask is respected.
        input_layers / output_layers: override the detected layers that read the
            input and write the output (names from ``model.named_modules()``).
        noise_std: symmetry-breaking noise added to D's copies after verification,
            relative to each tensor's RMS (0 = exact copies; training with
            :class:`gpd.Distiller` uses 1e-3 by default). The student is unchanged;
            ``report.noise_error`` is D's measured departure from the student.
        tolerance: largest relative error accepted by the verification.
        check: verify numerically (eval mode) and raise ExpansionError on mismatch.
        branches: a registered branch kind: "orepa" turns every 3x3 stride-1 convolution of
            the student into a six-branch block first (Channel-Branch Reparameterization);
            None or "none" keeps the student as it is. Exports merge the blocks back.
        branch_init: "default" (training from scratch) or "identity" (each block starts
            equal to its convolution: for a pretrained student).
        step_rule: "paper" (the default): every tensor of D, and so of the student, takes the
            SGD step it takes in the paper's parameterisation (gradient hooks on D's stem, head,
            biases and tokens; :mod:`gpd.sharing.steps`). "plain" (the old ``compensate_step=True``,
            which warns): the plain networks' steps: D steps as the plain wide network it is, and
            the student's gradient reaches D's divided tensors divided by r instead of multiplied,
            so the student steps as the unexpanded student would (docs/method.md, "Per-layer steps").
        layout: how D lays out the copies of a channel: "tiled" (``[h, h]``, the
            student's tensors are a prefix of D's), "interleaved" (each channel's
            copies side by side: what a ``forward()`` that splits or slices channels
            needs), or "auto" (the default): tiled, else interleaved where only that
            one is exact (docs/method.md, "Channel layouts").
    """
    if layout not in ("auto", *LAYOUTS):
        raise ArgumentError(f"layout must be 'auto', {', '.join(repr(x) for x in LAYOUTS)}; got {layout!r}")
    check_choice("step_rule", step_rule, StepRule, error=ArgumentError)
    layouts: list[Layout] = ["tiled", "interleaved"] if layout == "auto" else [layout]  # checked above
    plans = [WidthPlan(ratio, name) for name in layouts]
    example = example_of(model, example_input, input_size)  # before branches hide the stem conv
    model = with_branches(model, branches, branch_init)
    roles = detect_roles(model, example, input_layers, output_layers)
    refusals: list[ExpansionError] = []
    for plan in plans:
        try:
            return _expand_with_plan(model, plan, roles, example, noise_std, tolerance, check, step_rule)
        except ExpansionError as err:
            refusals.append(err)
    if len(refusals) == 1:
        raise refusals[0]
    raise ExpansionError(
        f"{refusals[0]} (the interleaved layout is refused too: {first_line(refusals[1])[:300]})"
    ) from refusals[0]


def read_without_a_call(model: nn.Module, names: list[str], example: ModelInput) -> set[str]:
    """The layers among ``names`` (never called) whose parameters the output still depends on:
    read directly (DeBERTa's relative embeddings, ``rel_embeddings.weight``), so verified with it."""
    params = {n: [p for p in model.get_submodule(n).parameters() if p.requires_grad] for n in names}
    flat = [p for group in params.values() for p in group]
    if not flat:
        return set()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outputs = [t for t in tree_leaves(example.call(model)) if isinstance(t, torch.Tensor) and t.requires_grad]
            if not outputs:
                return set()
            total = torch.stack([t.double().sum() for t in outputs]).sum()
            grads = dict(zip(map(id, flat), torch.autograd.grad(total, flat, allow_unused=True)))
    finally:
        model.train(was_training)
    return {n for n, group in params.items() if any(grads[id(p)] is not None for p in group)}


def _expand_with_plan(
    model: nn.Module,
    plan: WidthPlan,
    roles: LayerRoles,
    example: ModelInput,
    noise_std: float,
    tolerance: float,
    check: bool,
    step_rule: StepRule,
    choices: dict[str, int] | None = None,
) -> GPDModel:
    """:func:`expand` in one layout. A tensor with several axes of a channel count that its use does
    not decide (``generic.AmbiguousChannelAxis``) is expanded on each of them in turn, the last axis
    first, and the first that verifies is kept; without verification (``check=False``) it is refused."""
    choices = choices or {}
    try:
        with chosen_axes(choices):
            return _expand_once(model, plan, roles, example, noise_std, tolerance, check, step_rule)
    except ExpansionError as err:
        ambiguous = ambiguity_of(err)
        if ambiguous is None or not check or ambiguous.tensor in choices:
            raise
        failures = []
        for axis in reversed(ambiguous.axes):
            try:
                chosen = {**choices, ambiguous.tensor: axis}
                return _expand_with_plan(model, plan, roles, example, noise_std, tolerance, check, step_rule, chosen)
            except ExpansionError as other:
                failures.append(f"axis {axis}: {first_line(other)[:200]}")
        raise ExpansionError(f"{ambiguous}; none of them verifies ({'; '.join(failures)})") from err


def _expand_once(
    model: nn.Module,
    plan: WidthPlan,
    roles: LayerRoles,
    example: ModelInput,
    noise_std: float,
    tolerance: float,
    check: bool,
    step_rule: StepRule,
) -> GPDModel:
    """:func:`expand` in one layout with the axes chosen so far: build D, share, verify, add the noise."""
    probe = with_extra_samples(example, MEASURE_EXTRA, seed=1)
    dynamic, slices, output_maps, rules_used, dynamic64 = build_dynamic(model, plan, roles, probe)
    del probe
    missing = [name for name, _ in model.named_parameters() if name not in slices]
    if missing:
        raise ExpansionError(
            f"no expansion rule covers the parameters {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            "register a rule for their layer"
        )
    named = roles.input_layers | roles.output_layers
    unverified = sorted(n for n in roles.unused - named if any(True for _ in model.get_submodule(n).parameters()))
    unverified = [n for n in unverified if n not in read_without_a_call(model, unverified, example)]
    if unverified:
        warnings.warn(
            f"layers never called on the example input were expanded on both sides without verification: "
            f"{', '.join(unverified)} (a train-only head? name it with output_layers=)",
            stacklevel=2,
        )
    report = ExpansionReport(ratio=plan.ratio, roles=roles, rules_used=rules_used, layout=plan.layout)
    scales = paper_scales(slices, dynamic) if step_rule == "paper" else {}
    gpd_model = GPDModel(dynamic, StudentView(model, slices, step_rule), plan, report, paper_scales=scales)
    gpd_model.train(model.training)
    if check:  # the rules must be exact; the noise below is a deliberate, reported departure
        report.dynamic_error, report.student_error, report.checked_in_float64 = verify(
            model, gpd_model, with_extra_samples(example, CHECK_EXTRA, seed=2), output_maps, tolerance, dynamic64
        )
    del dynamic64
    if noise_std:
        add_symmetry_noise(gpd_model, noise_std)
        report.noise_std = noise_std
        if check:
            report.noise_error, _, _ = verify(model, gpd_model, example, output_maps, float("inf"))
    return gpd_model
