"""The ``gpd`` command line: ``gpd train``, ``gpd eval``, ``gpd expand`` and ``gpd export``.

User errors (a bad key, missing data, an unreadable checkpoint) print one line and
exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gpd.config import DEFAULT_CONFIG, bundled_config_names, load_config
from gpd.errors import ConfigError, GPDError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"gpd: error: {message} (see 'gpd --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _split_config_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """The first item is a config unless it looks like key=value."""
    if items and "=" not in items[0]:
        return items[0], list(items[1:])
    return None, list(items)


def cmd_train(args: argparse.Namespace) -> int:
    from gpd.training import dry_run, launch, resume_config

    config, overrides = _split_config_and_overrides(args.items)
    if args.resume is not None:
        if config is not None:
            raise ConfigError(
                f"--resume takes the run's own config.yaml; drop '{config}' (overrides like train.epochs=N are fine)"
            )
        if args.overwrite or args.dry_run:
            raise ConfigError("--resume cannot be combined with --overwrite or --dry-run")
    elif args.inexact_resume:
        raise ConfigError("--inexact-resume goes with --resume RUN_DIR")
    if args.resume is not None:
        launch(resume_config(Path(args.resume), overrides, inexact=args.inexact_resume), resume=True)
        return 0
    cfg = load_config(config or DEFAULT_CONFIG, overrides)
    if args.dry_run:
        dry_run(cfg)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
            print(
                f"dry run of {config or DEFAULT_CONFIG} passed: data, models, losses, 2 optimisation steps and the export all work"
            )
        return 0
    launch(cfg, overwrite=args.overwrite)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gpd.training.evaluate import evaluate_exported

    result = evaluate_exported(args.path, args.overrides)
    metrics = result.get("metrics") or {}
    if metrics:  # a non-classification task (segmentation: miou, pixel_acc), in percent
        shown = ", ".join(f"{'mIoU' if k == 'miou' else k} {v:.2f}%" for k, v in metrics.items())
        print(f"{result['path']}: {result['model']} test {shown} on {result['images']} {result['data']} images")
        return 0
    print(
        f"{result['path']}: {result['model']} test accuracy {result['accuracy']:.2f}% "
        f"on {result['images']} {result['data']} {result.get('unit', 'images')}"
    )
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    from gpd.cli.expand_cmd import run_expand

    report = run_expand(
        args.model,
        ratio=args.ratio,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        input_size=args.input_size,
        img_size=args.img_size,
        kwargs=args.kwarg,
        tolerance=args.tolerance,
    )
    print(report)
    return 0


def human_size(size: int) -> str:
    """Bytes in B/kB/MB/GB (powers of 1000, like ``ls --si``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def cmd_export(args: argparse.Namespace) -> int:
    from gpd.io.convert import export_student

    result = export_student(
        args.path, args.format, output=args.output, overwrite=args.overwrite, input_size=args.input_size
    )
    print(f"wrote {result.path} ({result.format}, {human_size(result.size)})")
    if result.note:
        print(result.note)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from gpd.reporting.report import write_report

    result = write_report(args.run_dirs, output=args.output, overwrite=args.overwrite)
    print(f"report written to {result.output}/: {', '.join(path.name for path in result.files)}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _add_expand_parser(sub: argparse._SubParsersAction) -> None:
    expand = sub.add_parser(
        "expand",
        help="build a model's dynamic teacher and report its size, FLOPs and the rules used",
        description=(
            "Build MODEL (a bundled name, tv:NAME or timm:NAME), expand it into its dynamic teacher D, "
            "verify D numerically and report parameters, FLOPs per image, the layers that read the "
            "input and write the output, and which rule expanded which layers."
        ),
    )
    expand.add_argument("model", help="e.g. resnet8, tv:resnet18, timm:vit_tiny_patch16_224")
    expand.add_argument("--ratio", type=float, default=2.0, help="width of D relative to the student (default 2)")
    expand.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    expand.add_argument("--in-chans", type=int, default=None, help="input channels (default 3, or C of --input-size)")
    size = expand.add_mutually_exclusive_group()
    size.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="size of one input sample")
    size.add_argument(
        "--img-size",
        type=int,
        metavar="S",
        help="square images of S pixels (also passed to timm models built for one size)",
    )
    expand.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model argument (repeatable), e.g. drop_rate=0.1",
    )
    expand.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error accepted (default 1e-4)")
    expand.set_defaults(func=cmd_expand)


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="convert an exported student to .pt, .safetensors, .onnx or a transformers directory",
        description=(
            "Convert the student of a run directory (or a student.pt) to another format. The output goes "
            "next to the input (student.safetensors, student.onnx, the folder student_hf) unless --output is "
            "given; an existing file is never replaced without --overwrite. --format hf writes an hf: "
            "student's save_pretrained directory (config, safetensors weights, tokenizer or image processor)."
        ),
    )
    export.add_argument("path", help="a run directory or a student.pt file")
    export.add_argument("--format", required=True, choices=["pt", "safetensors", "onnx", "hf"], help="output format")
    export.add_argument("--output", default=None, metavar="FILE", help="output file (or folder)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        default=None,
        help="ONNX input size of one sample (default: the size recorded in student.pt)",
    )
    export.set_defaults(func=cmd_export)


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help="plot and summarise one or more run directories (accuracy, gap, losses, lr; report.md)",
        description=(
            "Read the config.yaml and metrics.csv of each RUN_DIR and write accuracy.png, gap.png, "
            "losses.png, lr.png and report.md (a comparison table, the figures, per-epoch tables). "
            "One run reports into RUN_DIR/report/; several runs need --output. An existing report is "
            "never replaced without --overwrite."
        ),
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory written by gpd train")
    report.add_argument("--output", default=None, metavar="DIR", help="folder of the report (default RUN_DIR/report)")
    report.add_argument("--overwrite", action="store_true", help="replace an existing report")
    report.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpd", description="Gap Preserving Distillation: train a student with a dynamic teacher.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        "train",
        help="train a student (default: GPD from scratch on Fashion-MNIST)",
        description=(
            "Train a run. CONFIG is a YAML file or a bundled config "
            f"({', '.join(bundled_config_names())}); default {DEFAULT_CONFIG}. "
            "Overrides are dotted keys, e.g. train.epochs=5 gpd.ratio=3 data.train_subset=10000. "
            "On several GPUs: torchrun --nproc_per_node=N $(which gpd) train ..."
        ),
    )
    train.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]")
    train.add_argument("--overwrite", action="store_true", help="replace the run an output_dir already holds")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue an interrupted run from its last checkpoint, with its own config (train.epochs=N may extend it)",
    )
    train.add_argument(
        "--inexact-resume",
        action="store_true",
        help="with --resume: accept overrides that end bit-exact continuation (data.num_workers: other random "
        "streams for augmentation); refused for train.deterministic=true runs",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config: build data (a synthetic stand-in if absent), models and losses, "
        "run 2 steps on small images in a temporary directory, keep nothing",
    )
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="test accuracy of an exported student or a run directory")
    evaluate.add_argument("path", help="a run directory, a student.pt file or a directory of gpd export --format hf")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=... train.device=cpu")
    evaluate.set_defaults(func=cmd_eval)

    _add_expand_parser(sub)
    _add_export_parser(sub)
    _add_report_parser(sub)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse, with ``key=value`` overrides allowed after flags too
    (``gpd train CONFIG --dry-run train.epochs=1``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    target = {"train": "items", "eval": "overrides"}.get(args.command)
    if extra and target and all("=" in item and not item.startswith("-") for item in extra):
        setattr(args, target, [*getattr(args, target), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return args.func(args)
    except GPDError as err:
        print(f"gpd: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gpd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
