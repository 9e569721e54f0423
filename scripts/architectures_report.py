"""Write docs/architectures.md: the zoo of torchvision and timm classifiers, at each ratio.

With ``--zoo transformers`` it writes docs/architectures_transformers.md instead: the tiny random
Hugging Face transformers classifiers of ``gpd.expansion.transformers_zoo``, text and vision.

For each model of ``gpd.expansion.zoo.ZOO`` (small variants, small inputs, random
weights perturbed and random BatchNorm statistics, eval mode, float32, nothing
downloaded) and each ratio: exact or refused (with the reason), the measured errors
of D, of the student view and of the exported student (loaded strictly into a fresh
instance) on a fresh input, the parameter counts and the time ``gpd.expand`` took.
A model refused at ratio 2 is not run at the other ratios (they need the same layouts).

    PYTHONPATH=src .venv/bin/python scripts/architectures_report.py [--output docs/architectures.md] [--ratios 2 3 1.5] [--only NAME ...]
    PYTHONPATH=src .venv/bin/python scripts/architectures_report.py --zoo transformers
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision

from gpd.expansion.zoo import ZOO, ZooModel, ZooResult, check_model


@dataclass(frozen=True)
class Zoo:
    """A zoo, the file its table goes to, and the words that describe it there."""

    models: list[ZooModel]
    output: str
    source: str  # the zoo's Python name
    what: str  # "118 torchvision and timm classifiers, ..."
    inputs: str  # how the inputs were made
    versions: str
    title: str = "Architectures verified"
    weights: str = "random"


def _zoo(name: str) -> Zoo:
    base = f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"
    if name == "transformers":
        import transformers

        from gpd.expansion.transformers_zoo import TRANSFORMERS_ZOO

        return Zoo(
            TRANSFORMERS_ZOO, "docs/architectures_transformers.md", "gpd.expansion.transformers_zoo.TRANSFORMERS_ZOO",
            "Hugging Face transformers classifiers (vision: `ForImageClassification`; text: "
            "`ForSequenceClassification`), tiny random configs built offline (hidden 32, 2 layers, 4 heads, "
            "intermediate 37)",
            "text models read 3 rows of 8 token ids with an attention mask, two rows padded (at other places "
            "in the fresh batch than in the expansion's); vision models read 8 random images of the `input` size",
            f"{base}, transformers {transformers.__version__}", "Hugging Face transformers architectures verified",
            "weights at unit scale (`gpd.testing.unit_scale_weights`: transformers' std 0.02 makes attention nearly "
            "uniform, where a wrong head layout would hide), then",
        )  # fmt: skip
    return Zoo(
        ZOO, "docs/architectures.md", "gpd.expansion.zoo.ZOO", "torchvision and timm classifiers, small variants",
        "small inputs (the `input` column)", base,
    )  # fmt: skip


def _cell(result: ZooResult | None) -> str:
    if result is None:
        return "not run"
    if not result.exact:
        return "refused"
    errors = f"{result.dynamic_error:.0e} / {result.student_error:.0e} / {result.export_error:.0e}"
    layout = ", interleaved" if result.layout == "interleaved" else ""
    return f"exact {errors}{' (f64)' if result.float64 else ''}{layout}, {result.seconds:.1f} s"


def _reason(result: ZooResult) -> str:
    return " ".join(result.reason.split()).replace("|", "\\|")[:300]


def run(zoo: Zoo, names: list[str] | None, ratios: list[float]) -> tuple[dict[str, dict[float, ZooResult]], float]:
    """Every (model, ratio) result, and the wall time."""
    started = time.perf_counter()
    results: dict[str, dict[float, ZooResult]] = {}
    for spec in zoo.models:
        if names and spec.name not in names:
            continue
        results[spec.name] = {}
        for ratio in ratios:
            if ratio != 2 and 2 in results[spec.name] and not results[spec.name][2].exact:
                continue
            one = time.perf_counter()
            result = check_model(spec, ratio)
            results[spec.name][ratio] = result
            status = "exact" if result.exact else "refused: " + result.reason[:150]
            print(f"{time.perf_counter() - one:5.1f} s  {spec.name} r={ratio:g}: {status}", flush=True)
    return results, time.perf_counter() - started


def write(zoo: Zoo, results: dict[str, dict[float, ZooResult]], ratios: list[float], wall: float, output: str) -> None:
    specs = [spec for spec in zoo.models if spec.name in results]
    total = len(specs)
    summary = []
    for ratio in ratios:
        ran = [rs[ratio] for rs in results.values() if ratio in rs]
        exact = sum(r.exact for r in ran)
        summary.append(
            f"| {ratio:g} | {exact} / {total} ({100 * exact / total:.0f}%) | {len(ran) - exact} | {total - len(ran)} |"
        )
    families: dict[str, list[str]] = {}
    for spec in specs:
        families.setdefault(spec.family, []).append(spec.name)
    family_rows = []
    for family, names in sorted(families.items(), key=lambda item: item[0].lower()):
        exact = [n for n in names if 2 in results[n] and results[n][2].exact]
        family_rows.append(f"| {family} | {len(exact)} / {len(names)} | {', '.join(names)} |")
    rows, refusals = [], []
    for spec in specs:
        rs = results[spec.name]
        first = rs.get(ratios[0])
        params = (
            f"{first.student_params / 1e6:.2f}M -> {first.dynamic_params / 1e6:.2f}M" if first and first.exact else ""
        )
        cells = " | ".join(_cell(rs.get(ratio)) for ratio in ratios)
        rows.append(f"| {spec.name} | {spec.family} | {spec.input_name} | {params} | {cells} |")
        refusals += [f"| {spec.name} | {r.ratio:g} | {_reason(r)} |" for r in rs.values() if not r.exact]
    command = "PYTHONPATH=src .venv/bin/python scripts/architectures_report.py" + (
        " --zoo transformers" if zoo.models is not ZOO else ""
    )
    ratio_heads = " | ".join(f"r = {ratio:g}" for ratio in ratios)
    lines = [
        f"# {zoo.title}",
        "",
        f"Written by `scripts/architectures_report.py` (`{command}`;",
        f"this run took {wall / 60:.1f} min on one CPU thread of a shared machine). The zoo is `{zoo.source}`:",
        f"{total} {zoo.what}; {zoo.inputs}; {zoo.weights}",
        "weights perturbed by N(0, 0.02²) and random BatchNorm statistics, eval mode, float32; nothing is",
        "downloaded. For each exact model three checks run on a fresh input (not the one `gpd.expand` verified",
        "on): D == student, student view == original, and the exported student loaded strictly into a fresh",
        "instance == original. Errors are max |out - ref| / max |ref| (D / view / export); `(f64)` marks the",
        "errors of a float64 expansion, measured where float32 rounding exceeded 1e-4. The time is that of",
        "`gpd.expand` (verification included). A model refused at r = 2 is not run at the other ratios.",
        "`interleaved` marks the models that `gpd.expand` gave the interleaved layout (each channel's copies side",
        'by side, for a forward() that splits or slices channels; docs/method.md, "Channel layouts"): '
        f"{sum(1 for rs in results.values() for r in rs.values() if r.exact and r.layout == 'interleaved' and r.ratio == ratios[0])} at r = {ratios[0]:g}.",
        f"Measured {time.strftime('%Y-%m-%d')} with {zoo.versions}, on {platform.machine()} with Python "
        f"{platform.python_version()}.",
        "",
        "| ratio | exact | refused | not run |",
        "|---|---|---|---|",
        *summary,
        "",
        "## Families at ratio 2",
        "",
        "| family | exact | models |",
        "|---|---|---|",
        *family_rows,
        "",
        "## Models",
        "",
        f"| model | family | input | parameters S -> D (r = {ratios[0]:g}) | {ratio_heads} |",
        "|---|---|---|---|" + "---|" * len(ratios),
        *rows,
        "",
        "## Refusals",
        "",
        "Each is the `gpd.ExpansionError` that `gpd.expand` raised (first 300 characters).",
        "",
        "| model | ratio | reason |",
        "|---|---|---|",
        *refusals,
        "",
    ]
    Path(output).write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", choices=["torch", "transformers"], default="torch")
    parser.add_argument("--output", help="default: docs/architectures.md, or docs/architectures_transformers.md")
    parser.add_argument("--ratios", nargs="+", type=float, default=[2, 3, 1.5])
    parser.add_argument("--only", nargs="*", help="zoo model names to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    zoo = _zoo(args.zoo)
    if args.zoo == "transformers":
        import transformers

        transformers.logging.set_verbosity_error()
    output = args.output or zoo.output
    results, wall = run(zoo, args.only, args.ratios)
    write(zoo, results, args.ratios, wall, output)
    print(f"wrote {output} in {wall:.0f} s")


if __name__ == "__main__":
    main()
