"""Write docs/architectures.md: every architecture gpd is tested on, at each ratio.

For each model: random weights perturbed and random BatchNorm statistics
(gpd.testing.perturbed_for_verification), 32 x 32 inputs, eval mode, float32. The
table gives the measured relative errors of D and of the student view against the
original, the parameter counts, or the reason a ratio is refused.

    .venv/bin/python scripts/architectures_report.py [--output docs/architectures.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

import gpd
from gpd.models import create_model, list_models
from gpd.testing import perturbed_for_verification

CNN_RATIOS = (2, 3, 1.5)


def architectures() -> list[tuple[str, Callable[[], nn.Module], tuple[float, ...]]]:
    tv = [(f"tv:{n}", lambda n=n: torchvision.models.get_model(n, num_classes=10), CNN_RATIOS)
          for n in ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vgg11_bn"]]
    tm = [(f"timm:{n}", lambda n=n: timm.create_model(n, num_classes=10), CNN_RATIOS)
          for n in ["resnet18", "mobilenetv1_100"]]
    vits = [(f"timm:{n} (img_size 32)", lambda n=n: timm.create_model(n, num_classes=10, img_size=32), CNN_RATIOS)
            for n in ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"]]
    vits.append(("timm:convnext_atto", lambda: timm.create_model("convnext_atto", num_classes=10), CNN_RATIOS))
    ours = [(n, lambda n=n: create_model(n, 10, 3, **({"small_input": True} if n == "mobilenetv1" else {})), CNN_RATIOS)
            for n in list_models() if not n.startswith("rvt")]
    vits += [(f"{n} (img_size 32)", lambda n=n: create_model(n, 10, 3, img_size=32), CNN_RATIOS) for n in ("rvt_tiny", "rvt_small")]
    return tv + tm + ours + vits  # fmt: skip


def measure(factory: Callable[[], nn.Module], ratio: float) -> str:
    torch.manual_seed(0)
    student = perturbed_for_verification(factory(), (3, 32, 32))
    started = time.perf_counter()
    try:
        model = gpd.expand(student, ratio, input_size=(3, 32, 32))
    except gpd.ExpansionError as err:
        return f"| {ratio:g} | refused: {err} | | | |"
    seconds = time.perf_counter() - started
    s_params = sum(p.numel() for p in student.parameters())
    d_params = sum(p.numel() for p in model.parameters())
    r = model.report
    return (
        f"| {ratio:g} | {r.teacher_error:.1e} / {r.student_error:.1e} | {s_params / 1e6:.2f}M -> "
        f"{d_params / 1e6:.2f}M ({d_params / s_params:.2f}x) | {', '.join(sorted(r.roles.input_layers))} -> "
        f"{', '.join(sorted(r.roles.output_layers))} | {seconds:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/architectures.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# Architectures verified",
        "",
        "Written by `scripts/architectures_report.py` (the command: "
        "`.venv/bin/python scripts/architectures_report.py`). Random weights perturbed by N(0, 0.02²) and",
        "random BatchNorm statistics, 32 x 32 inputs, eval mode, float32, one CPU thread.",
        "Errors are max |out - ref| / max |ref| of D and of the shared-parameter student view",
        "against the original student; `gpd.expand` accepts at most 1e-4.",
        f"Measured {time.strftime('%Y-%m-%d')} with torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}, on {platform.machine()} with {platform.python_version()}.",
        "",
    ]
    for name, factory, ratios in architectures():
        lines += [f"## {name}", "", "| ratio | error D / student | parameters S -> D | input -> output layers | expand s |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for ratio in ratios:
            lines.append(measure(factory, ratio))
            print(name, lines[-1], flush=True)
        lines.append("")
    Path(args.output).write_text("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
