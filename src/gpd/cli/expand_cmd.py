"""``gpd expand``: build a model's dynamic teacher and report what it costs and how it was made.

The report answers the questions one has before training with GPD: how much bigger
D is than the student (parameters and FLOPs per image), whether D and the student
view really compute the student's function, which layers were kept at the student's
width because they read the image or write the logits, and which rule expanded which
layers (so a custom rule can be seen to apply).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gpd.errors import ConfigError
from gpd.models.registry import timm_needs_img_size

if TYPE_CHECKING:
    from gpd.expansion.model import GPDModel

LABEL_WIDTH = 15
SHOWN_LAYERS = 3


@dataclass(frozen=True)
class Cost:
    """Parameter count and FLOPs of one forward pass on a single sample."""

    params: int
    flops: int


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings as model kwargs; values are Python literals where they parse.

    ``drop_rate=0.1`` gives a float, ``img_size=[32,64]`` a list, ``act_layer=gelu``
    stays a string: model factories expect Python values, not YAML's guesses.
    """
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--kwarg expects key=value with a Python identifier as key, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    return kwargs


def resolve_in_chans(in_chans: int | None, input_size: Sequence[int] | None) -> int:
    """--in-chans, else the channel count of --input-size, else 3; they must agree."""
    if input_size is not None:
        if in_chans is not None and in_chans != input_size[0]:
            raise ConfigError(f"--in-chans {in_chans} disagrees with --input-size {' '.join(map(str, input_size))}")
        return int(input_size[0])
    return 3 if in_chans is None else in_chans


def requested_spatial(input_size: Sequence[int] | None, img_size: int | None) -> list[int] | None:
    """The (H, W) the user asked for, if any."""
    if input_size is not None:
        return [int(s) for s in input_size[1:]]
    if img_size is not None:
        return [img_size, img_size]
    return None


def build_model(
    name: str, num_classes: int, in_chans: int, spatial: list[int] | None, kwargs: dict[str, Any]
) -> nn.Module:
    """create_model, passing the image size to timm models that are built for one size."""
    from gpd.models import create_model

    kwargs = dict(kwargs)
    if spatial is not None and "img_size" not in kwargs and timm_needs_img_size(name):
        kwargs["img_size"] = spatial[0] if spatial[0] == spatial[1] else spatial
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def model_input_size(model: nn.Module, in_chans: int, spatial: list[int] | None) -> tuple[int, ...]:
    """The per-sample input size: the requested one, else the model's ``img_size`` or default.

    timm's pretrained config keeps 3 channels and 224 pixels whatever the model was
    built with, so the channel count and an ``img_size`` kwarg take precedence.
    """
    if spatial is not None:
        return (in_chans, *spatial)
    img_size = (getattr(model, "gpd_spec", None) or {}).get("kwargs", {}).get("img_size")
    if isinstance(img_size, int):
        return (in_chans, img_size, img_size)
    if isinstance(img_size, list) and len(img_size) == 2:
        return (in_chans, *img_size)
    from gpd.expansion.expand import infer_input_size

    inferred = infer_input_size(model)
    return (in_chans, *inferred[1:]) if len(inferred) == 3 else inferred


def measure(model: nn.Module, input_size: tuple[int, ...]) -> Cost:
    """Parameters and FLOPs of one sample in eval mode (FlopCounterMode: a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    return Cost(params=params, flops=int(counter.get_total_flops()))


def _line(label: str, text: str) -> str:
    return f"{label:<{LABEL_WIDTH}}{text}"


def _names(names: Sequence[str] | frozenset[str], order: Sequence[str] = ()) -> str:
    """Layer names in forward order (unordered ones sorted), or 'none'."""
    rank = {name: i for i, name in enumerate(order)}
    listed = sorted(names, key=lambda n: (rank.get(n, len(rank)), n))
    return ", ".join(n or "(root)" for n in listed) if listed else "none"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def cost_lines(student: Cost, dynamic: Cost) -> list[str]:
    """An aligned table: parameters and GFLOPs/image of S and D, and D / S."""
    rows = [
        ("", "parameters", "GFLOPs/image"),
        ("student S", f"{student.params:,}", f"{student.flops / 1e9:.4f}"),
        ("dynamic D", f"{dynamic.params:,}", f"{dynamic.flops / 1e9:.4f}"),
        ("D / S", _ratio(dynamic.params, student.params), _ratio(dynamic.flops, student.flops)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in (1, 2)]
    return [_line(label, f"{params:>{widths[0]}}   {flops:>{widths[1]}}") for label, params, flops in rows]


def verification_line(
    dynamic_error: float | None, student_error: float | None, tolerance: float, checked_in_float64: bool = False
) -> str:
    if dynamic_error is None or student_error is None:
        return _line("verification", "not run")
    how = (
        f"exact in float64; float32 rounding gives relative error of D {dynamic_error:.1e}, "
        f"of the student view {student_error:.1e} (above the tolerance {tolerance:.0e})"
        if checked_in_float64
        else f"relative error of D {dynamic_error:.1e}, of the student view {student_error:.1e} "
        f"(tolerance {tolerance:.0e})"
    )
    return _line("verification", f"passed (eval mode): {how}")


def rule_lines(rules_used: dict[str, list[str]]) -> list[str]:
    """One line per rule: its name, how many layers it expanded, the first few of them."""
    if not rules_used:
        return [_line("rules", "none")]
    width = max(len(rule) for rule in rules_used)
    count_width = max(len(str(len(names))) for names in rules_used.values())
    lines = []
    for i, (rule, names) in enumerate(rules_used.items()):  # first use, i.e. forward order
        shown = ", ".join(n or "(root)" for n in names[:SHOWN_LAYERS])
        if len(names) > SHOWN_LAYERS:
            shown += f", ... (+{len(names) - SHOWN_LAYERS})"
        lines.append(_line("rules" if i == 0 else "", f"{rule:<{width}}  {len(names):>{count_width}}  {shown}"))
    return lines


def format_report(
    name: str,
    num_classes: int,
    input_size: tuple[int, ...],
    model: GPDModel,
    student: Cost,
    dynamic: Cost,
    tolerance: float,
) -> str:
    """The whole report of ``gpd expand``: costs, verification, roles, rules."""
    report = model.report
    roles = report.roles
    lines = [
        _line(
            "model", f"{name}, {num_classes} classes, input {'x'.join(map(str, input_size))}, ratio {report.ratio:g}"
        ),
        _line(
            "layout",
            report.layout
            + (
                " (each channel's copies side by side: the model splits channels)"
                if report.layout == "interleaved"
                else ""
            ),
        ),
        *cost_lines(student, dynamic),
        verification_line(report.dynamic_error, report.student_error, tolerance, report.checked_in_float64),
        _line("input layers", _names(roles.input_layers, roles.order)),
        _line("output layers", _names(roles.output_layers, roles.order)),
    ]
    if roles.unexpanded:
        lines.append(_line("kept narrow", _names(roles.unexpanded, roles.order)))
    if roles.unused:
        lines.append(_line("unused", f"{_names(roles.unused)} (not run by the trace: expanded on both sides)"))
    lines.extend(rule_lines(report.rules_used))
    return "\n".join(lines)


def run_expand(
    name: str,
    *,
    ratio: float = 2.0,
    num_classes: int = 10,
    in_chans: int | None = None,
    input_size: Sequence[int] | None = None,
    img_size: int | None = None,
    kwargs: Sequence[str] = (),
    tolerance: float = 1e-4,
) -> str:
    """Build, expand (with verification) and measure ``name``; return the report text.

    Raises ModelError for a model that cannot be built and ExpansionError for one
    that cannot be expanded exactly; the CLI prints either as one line.
    """
    import gpd

    channels = resolve_in_chans(in_chans, input_size)
    spatial = requested_spatial(input_size, img_size)
    student = build_model(name, num_classes, channels, spatial, parse_kwargs(kwargs))
    size = model_input_size(student, channels, spatial)
    model = gpd.expand(student, ratio, input_size=size, tolerance=tolerance)
    costs = measure(student, size), measure(model.dynamic, size)
    return format_report(name, num_classes, size, model, *costs, tolerance)
