"""Argument helpers shared by several sub-commands (private: not a sub-command)."""

from __future__ import annotations

import argparse
import importlib.util
import json


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` -> ``(key, value)``; the value is parsed as JSON when it can be (numbers, true)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: object = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def parse_indices(text: str) -> list[int]:
    """``"3,17"`` -> ``[3, 17]``: integers >= 0, at least one."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return [int(part) for part in parts]


def nonnegative_int(text: str) -> int:
    """One integer >= 0 (an index, a seed)."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    """An integer >= 1 (draws, counts, workers)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--option KEY=VALUE`` (repeatable) and ``--seed``."""
    parser.add_argument("--option", "-o", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="method setting, repeatable, e.g. -o ridge=0.1, -o num_samples=500, "
                             "-o scores=runs.scores.npz, -o scale=raw")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="random seed for stochastic inference (default 0)")


#: packages of the ``collect`` extra that logging runs needs (the modelling commands need none).
COLLECT_PACKAGES: tuple[str, ...] = ("torch", "transformers", "datasets")


def require_collect_extra(command: str) -> None:
    """Raise a one-line :class:`ValueError` naming the extra when ``command`` cannot run here."""
    missing = [name for name in COLLECT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"'{command}' trains models and needs the collect extra (missing: {', '.join(missing)}); "
                         "install it with: pip install 'bayes-simfluence[collect]'")

