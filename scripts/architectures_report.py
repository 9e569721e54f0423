"""Write docs/architectures.md: the zoo of torchvision and timm classifiers, at each ratio.

For each model of ``gpd.expansion.zoo.ZOO`` (small variants, small inputs, random
weights perturbed and random BatchNorm statistics, eval mode, float32, nothing
downloaded) and each ratio: exact or refused (with the reason), the measured errors
of D, of the student view and of the exported student (loaded strictly into a fresh
instance) on a fresh input, the parameter counts and the time ``gpd.expand`` took.

    PYTHONPATH=src .venv/bin/python scripts/architectures_report.py [--output docs/architectures.md] [--ratios 2 3 1.5]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections import defaultdict
from pathlib import Path

import timm
import torch
import torchvision

from gpd.expansion.zoo import ZOO, ZooResult, check_model


def _reason(result: ZooResult) -> str:
    return result.reason.replace("|", "\\|")[:400]


def _row(result: ZooResult) -> str:
    if not result.exact:
        return f"| {result.ratio:g} | refused: {_reason(result)} | | | {result.seconds:.1f} |"
    return (
        f"| {result.ratio:g} | {result.teacher_error:.1e} / {result.student_error:.1e} / {result.export_error:.1e}{' (float64)' if result.float64 else ''} | "
        f"{result.student_params / 1e6:.2f}M -> {result.teacher_params / 1e6:.2f}M | exact | {result.seconds:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/architectures.md")
    parser.add_argument("--ratios", nargs="+", type=float, default=[2, 3, 1.5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    results: dict[str, list[ZooResult]] = defaultdict(list)
    for spec in ZOO:
        for ratio in args.ratios:
            result = check_model(spec, ratio)
            results[spec.name].append(result)
            print(f"{spec.name} r={ratio:g}: {'exact' if result.exact else 'refused: ' + result.reason[:160]}", flush=True)
    wall = time.perf_counter() - started
    families: dict[str, list[str]] = defaultdict(list)
    for spec in ZOO:
        families[spec.family].append(spec.name)
    summary = []
    for ratio in args.ratios:
        exact = sum(1 for rs in results.values() for r in rs if r.ratio == ratio and r.exact)
        summary.append(f"| {ratio:g} | {exact} / {len(ZOO)} ({100 * exact / len(ZOO):.0f}%) | {len(ZOO) - exact} |")
    at2 = {name: next((r for r in rs if r.ratio == 2), None) for name, rs in results.items()}
    family_rows = []
    for family, names in sorted(families.items()):
        exact = [n for n in names if at2.get(n) is not None and at2[n].exact]
        family_rows.append(f"| {family} | {len(exact)} / {len(names)} | {', '.join(names)} |")
    lines = [
        "# Architectures verified",
        "",
        "Written by `scripts/architectures_report.py` (`PYTHONPATH=src .venv/bin/python scripts/architectures_report.py`;",
        f"this run took {wall / 60:.1f} min on one CPU thread). The zoo is `gpd.expansion.zoo.ZOO`: {len(ZOO)}",
        "torchvision and timm classifiers, small variants and small inputs (the size is in the model's",
        "section), random weights perturbed by N(0, 0.02²) and random BatchNorm statistics, eval mode, float32;",
        "nothing is downloaded. For each exact model three checks run on a fresh input: D == student, student",
        "view == original, and the exported student loaded strictly into a fresh instance == original. Errors",
        "are max |out - ref| / max |ref| (D / view / export; float64 where float32 rounding exceeded 1e-4);",
        "`gpd.expand` accepts at most 1e-4. `expand s` is the time `gpd.expand` took (verification included).",
        f"Measured {time.strftime('%Y-%m-%d')} with torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, timm {timm.__version__}, on {platform.machine()} with Python {platform.python_version()}.",
        "",
        "| ratio | exact | refused |",
        "|---|---|---|",
        *summary,
        "",
        "## Families at ratio 2",
        "",
        "| family | exact | models |",
        "|---|---|---|",
        *family_rows,
        "",
    ]
    for spec in ZOO:
        lines += [f"## {spec.name} ({spec.family}, input {spec.input_size[1]}x{spec.input_size[2]})", "",
                  "| ratio | error D / view / export | parameters S -> D | result | expand s |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [_row(r) for r in results[spec.name]]
        lines.append("")
    Path(args.output).write_text("\n".join(lines))
    print(f"wrote {args.output} in {wall:.0f} s")


if __name__ == "__main__":
    main()
