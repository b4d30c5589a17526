"""Time the command line's start-up: ``bayes-simfluence --help`` and ``COMMAND --help``.

    python benchmarks/bench_cli_startup.py     # about half a minute on 2 CPU cores

Each help is asked for in a fresh process (``python -m bayes_simfluence.cli ... --help``), five
times; the table gives the median wall time, which includes the interpreter's own start-up
(``python -c pass`` is its first row). Prints a markdown table for
``benchmarks/results/cli_startup.md``.
"""

from __future__ import annotations

import pkgutil
import platform
import statistics
import subprocess
import sys
import time

from bayes_simfluence import commands

REPEATS = 5


def median_seconds(command: list[str]) -> float:
    """Median wall time of ``command`` over :data:`REPEATS` fresh processes."""
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    names = sorted(module.name for module in pkgutil.iter_modules(commands.__path__) if not module.name.startswith("_"))
    rows = [("python -c pass", median_seconds([sys.executable, "-c", "pass"])),
            ("bayes-simfluence --help", median_seconds([sys.executable, "-m", "bayes_simfluence.cli", "--help"]))]
    rows += [(f"bayes-simfluence {name} --help",
              median_seconds([sys.executable, "-m", "bayes_simfluence.cli", name, "--help"])) for name in names]
    print(f"{platform.machine()}, Python {platform.python_version()}; median of {REPEATS} fresh processes\n")
    print("| command | wall s |\n|---|---|")
    for label, seconds in rows:
        print(f"| `{label}` | {seconds:.2f} |")


if __name__ == "__main__":
    main()
