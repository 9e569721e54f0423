"""The ``gpd`` command line: ``gpd train`` and ``gpd eval``.

User errors (a bad key, missing data, an unreadable checkpoint) print one line and
exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gpd.config import DEFAULT_CONFIG, bundled_config_names, load_config
from gpd.errors import GPDError

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
    from gpd.training import prepare_run_dir, train

    config, overrides = _split_config_and_overrides(args.items)
    cfg = load_config(config or DEFAULT_CONFIG, overrides)
    run_dir = prepare_run_dir(cfg, overwrite=args.overwrite)
    train(cfg, run_dir)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gpd.evaluation import evaluate_exported

    result = evaluate_exported(args.path, args.overrides)
    print(
        f"{result['path']}: {result['model']} test accuracy {result['accuracy']:.2f}% "
        f"on {result['images']} {result['data']} images"
    )
    return 0


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
            "Overrides are dotted keys, e.g. train.epochs=5 gpd.ratio=3 data.train_subset=10000."
        ),
    )
    train.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]")
    train.add_argument("--overwrite", action="store_true", help="reuse an output_dir that already holds a run")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="test accuracy of an exported student or a run directory")
    evaluate.add_argument("path", help="a run directory or a student.pt file")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=... train.device=cpu")
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
