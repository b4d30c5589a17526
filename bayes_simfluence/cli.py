"""Command-line entry point: ``bayes-simfluence <command> ...``.

Each sub-command lives in its own module in :mod:`bayes_simfluence.commands`, defining
``register(subparsers)`` (adds its parser and ``set_defaults(func=run)``) and ``run(args) -> int``.
Modules whose name starts with ``_`` are helpers, not commands. This module only discovers them and turns input errors into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from bayes_simfluence import commands
from bayes_simfluence.runs import RunsFormatError

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayes-simfluence",
        description=(
            "Training-data attribution by simulating training runs. Log runs of a model trained "
            "on random curricula, fit a simulator L_t = alpha(c_t) * L_{t-1} + beta(c_t) of each "
            "test example's loss, then simulate, evaluate and compare new curricula."
        ),
        epilog="Run 'bayes-simfluence COMMAND --help' for the options and examples of each command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{module_info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_ERROR
    try:
        return int(args.func(args) or 0)
    except (RunsFormatError, ValueError, FileNotFoundError) as error:
        print(f"bayes-simfluence {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
