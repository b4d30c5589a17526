"""Command-line entry point: ``bayes-simfluence <command> ...``.

Each sub-command lives in its own module in :mod:`bayes_simfluence.commands`, defining
``register(subparsers)`` (adds its parser and ``set_defaults(func=run, imports=IMPORTS)``) and
``run(args) -> int``. Modules whose name starts with ``_`` are helpers, not commands. This module
only discovers them and turns errors into one line on stderr: exit code 2 for bad input, 1 for
anything unexpected (``--debug`` shows the traceback), 130 on an interrupt.

Building the parser imports the command modules only, and they import nothing heavy at their top
(:mod:`bayes_simfluence.choices` holds what their help shows), so ``--help`` and ``COMMAND --help``
answer without loading JAX, NumPyro, ArviZ or matplotlib. The modules a command's ``run`` needs
(its ``IMPORTS``) are loaded just before it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import os
import sys

from bayes_simfluence import commands, interrupts

USAGE_ERROR = 2
INTERNAL_ERROR = 1
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayes-simfluence",
        description=(
            "Training-data attribution by simulating training runs. Log runs of a model trained "
            "on random curricula, fit a simulator L_t = alpha(c_t) * L_{t-1} + beta(c_t) of each "
            "test example's loss, then simulate, evaluate and compare new curricula."
        ),
        epilog=("Run 'bayes-simfluence COMMAND --help' for the options and examples of each command. "
                "Exit codes: 0 done; 2 bad input (one line says what, where, and what was expected); "
                "1 unexpected error (rerun with --debug before COMMAND for the traceback); 130 interrupted. "
                "Outputs are written whole at exactly the given path, or not at all."),
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        importlib.import_module(f"{commands.__name__}.{module_info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None, hard_exit: bool | None = None) -> int:
    """Run one command; input errors give one line and exit 2, anything unexpected one line and exit 1.

    ``--debug`` (before the command) re-raises instead, for the full traceback. Ctrl-C is handled
    here once (:mod:`bayes_simfluence.interrupts`): exit code 130 and no output written, also where
    the interrupt was swallowed inside a JAX callback. ``hard_exit`` (default: when run as the
    command, ``argv`` None) leaves an interrupted process with ``os._exit`` after flushing its
    streams, so that the interpreter's teardown cannot crash in XLA's threads.
    """
    hard_exit = argv is None if hard_exit is None else hard_exit
    with interrupts.handling(keep=hard_exit):
        code, command = _run(argv, hard_exit)
        if interrupts.late():
            print(f"bayes-simfluence{command}: Ctrl-C came after the command had finished; its output is complete",
                  file=sys.stderr)
        if code == INTERRUPTED and hard_exit:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED)
    return code


def _run(argv: list[str] | None, hard_exit: bool = False) -> tuple[int, str]:
    """``(exit code, " COMMAND" or "")`` of one command (``hard_exit``: a SIGINT while the parser is
    built or the command's modules are imported ends the process at once,
    :func:`~bayes_simfluence.interrupts.exiting_at_once`)."""
    args = None
    try:
        with interrupts.exiting_at_once() if hard_exit else contextlib.nullcontext():
            parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return USAGE_ERROR, ""
        with interrupts.exiting_at_once() if hard_exit else contextlib.nullcontext():
            for module in getattr(args, "imports", ()):
                importlib.import_module(module)  # JAX among them: an interrupt may land inside its import
        code = int(args.func(args) or 0)
        interrupts.finish()  # the outputs are complete: a SIGINT from now on is late
        interrupts.check()  # one before, swallowed in a callback on its way, still counts
        return code, f" {args.command}"
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the boundary: one line, traceback on request
        if isinstance(error, KeyboardInterrupt) or interrupts.requested():
            interrupts.acknowledge()
            error = KeyboardInterrupt()
        if args is not None and args.debug and not isinstance(error, KeyboardInterrupt):
            raise
        message, code = _report(error)
        command = f" {args.command}" if getattr(args, "command", None) else ""
        print(f"bayes-simfluence{command}: {message}", file=sys.stderr)
        return code, command


#: errors that mean the input was wrong (the message says how), as opposed to a fault of ours.
INPUT_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _report(error: BaseException) -> tuple[str, int]:
    """The one line and the exit code for an error that reached the CLI boundary."""
    if isinstance(error, KeyboardInterrupt):
        done = interrupts.written_files()
        if done:  # the interrupt came after these were complete (nothing half-written is ever left)
            return (f"interrupted after writing {len(done)} file(s) (the last: {done[-1]}); nothing else was "
                    "written"), INTERRUPTED
        return "interrupted; nothing was written", INTERRUPTED
    text = " ".join(str(error).split())[:2000] or type(error).__name__
    if isinstance(error, INPUT_ERRORS):
        return f"error: {text}", USAGE_ERROR
    if isinstance(error, OSError) and error.filename is not None:  # a file that cannot be read or written
        return f"error: {error.filename}: {error.strerror or text}", USAGE_ERROR
    return (f"error: unexpected {type(error).__name__}: {text} "
            "(rerun with --debug before the command for the traceback)"), INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
