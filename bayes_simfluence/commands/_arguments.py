"""Argument helpers shared by several sub-commands (private: not a sub-command)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterable

from bayes_simfluence.validation import InputError

#: the largest seed: NumPy and JAX take seeds below 2**32 (larger ones overflowed deep inside them).
MAX_SEED = 2**32 - 1


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` -> ``(key, value)``; the value is parsed as JSON when it can be (numbers, true)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: object = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (a word), too many digits, nested too deeply
        value = raw
    if isinstance(value, (list, dict)):  # no option takes a structure: keep the text, the method refuses it
        value = raw
    return key.strip(), value


def options_dict(pairs: Iterable[tuple[str, object]]) -> dict:
    """``-o`` pairs as a dict; a key given twice is refused (which one was meant?)."""
    options: dict = {}
    for key, value in pairs:
        if key in options:
            raise InputError(f"-o {key}: given twice ({json.dumps(options[key], default=str)} and "
                             f"{json.dumps(value, default=str)}); give it once")
        options[key] = value
    return options


def output_file(text: str) -> Path:
    """An output file name; one ending in '/' names a folder and is refused (``--out newdir/``)."""
    if not text or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} names a folder; give a file name, e.g. {text or './'}out.npz")
    return Path(text)


def parse_indices(text: str) -> list[int]:
    """``"3,17"`` -> ``[3, 17]``: integers >= 0, at least one."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return [int(part) for part in parts]


#: integers on the command line have at most this many digits (Python refuses to parse 4300).
MAX_DIGITS = 18


def _digits(text: str, expected: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if len(text.lstrip("0")) > MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"expected {expected} of at most {MAX_DIGITS} digits, got one of "
                                         f"{len(text)} digits")
    return int(text)


def nonnegative_int(text: str) -> int:
    """One integer >= 0 (an index, a count)."""
    return _digits(text, "an integer >= 0")


def positive_int(text: str) -> int:
    """An integer >= 1 (draws, counts, workers)."""
    value = _digits(text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def seed(text: str) -> int:
    """A random seed: an integer in ``[0, 2**32)``."""
    value = _digits(text, "an integer >= 0")
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be at most {MAX_SEED} (2**32 - 1), got {text!r}")
    return value


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--option KEY=VALUE`` (repeatable) and ``--seed``."""
    parser.add_argument("--option", "-o", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="method setting, repeatable, e.g. -o ridge=0.1, -o num_samples=500, "
                             "-o scores=runs.scores.npz, -o scale=raw")
    parser.add_argument("--seed", type=seed, default=0,
                        help="random seed for stochastic inference (default 0)")


#: packages of the ``collect`` extra that logging runs needs (the modelling commands need none).
COLLECT_PACKAGES: tuple[str, ...] = ("torch", "transformers", "datasets")


def require_collect_extra(command: str) -> None:
    """Raise a one-line :class:`ValueError` naming the extra when ``command`` cannot run here."""
    missing = [name for name in COLLECT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"'{command}' trains models and needs the collect extra (missing: {', '.join(missing)}); "
                         "install it with: pip install 'bayes-simfluence[collect]'")

