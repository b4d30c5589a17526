"""Every command and Python snippet of the README and the docs runs, on what the shown steps
produce, and prints what the page shows.

Pages are read in order (README first, then ``docs/*.md``), each in its own scratch folder that
starts with a fresh demo output (the README's first command, run once for the session). Blocks:

- ```bash: run with ``bash -e``; ``.venv/bin/`` means this interpreter's folder, and the
  install steps of a ``python3 -m venv ... && pip install ... && cmd`` chain are dropped (the
  package is installed already). The test command itself (``pytest``) is not run from here.
- ```python: run with this interpreter.
- ```text with an ``<!-- output -->`` line above it: what the last command block run before it
  prints. Each line shown must appear in the printed output,
  in order; numbers agree to 1% (or 1e-4 absolute), and ``…`` stands for any one token (times).
- A block under an ``<!-- long: ... -->`` line (an experiment's reproduction: hours) is not run.

Marked ``slow``: the demo takes minutes (collecting real runs and fitting the default model).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)\s*$")


class Block(NamedTuple):
    page: str
    line: int
    kind: str  # bash | python | text | ...
    code: str
    marks: str  # the HTML comments on the lines just above the block


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown page with the comments above each."""
    lines, found, k = path.read_text().splitlines(), [], 0
    while k < len(lines):
        opening = FENCE.match(lines[k])
        if opening is None:
            k += 1
            continue
        end = next(j for j in range(k + 1, len(lines)) if lines[j].strip() == "```")
        above = []
        j = k - 1
        while j >= 0 and (lines[j].strip().startswith("<!--") or not lines[j].strip()):
            above.append(lines[j].strip())
            j -= 1
        found.append(Block(path.name, k + 1, opening.group(1), "\n".join(lines[k + 1:end]), " ".join(above)))
        k = end + 1
    return found


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def runnable(command: str) -> str | None:
    """The part of a shell block this test runs: install steps dropped, the venv mapped to this
    interpreter; None for the test command itself."""
    if "pytest" in command:
        return None
    steps = []
    for step in re.split(r"\s*&&\s*", command.strip()):
        if re.search(r"-m venv|pip install", step):
            continue
        steps.append(re.sub(r"\.venv(-core)?/bin/", f"{BIN}/", step))
    return " && ".join(steps)


NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _tokens(line: str) -> list[str]:
    return re.findall(r"[^\s\[\],();:]+", line)


def _same(expected: str, actual: str) -> bool:
    if expected == "…":
        return True
    e, a = expected.rstrip("%"), actual.rstrip("%")
    if NUMBER.match(e) and NUMBER.match(a):
        x, y = float(e), float(a)
        return math.isclose(x, y, rel_tol=0.01, abs_tol=1e-4)
    return expected == actual


def _line_matches(expected: str, actual: str) -> bool:
    want, got = _tokens(expected), _tokens(actual)
    return len(want) == len(got) and all(_same(w, g) for w, g in zip(want, got))


def check_output(expected: str, printed: str, where: str) -> None:
    """Every non-empty line of ``expected`` appears in ``printed``, in order."""
    lines, start = printed.splitlines(), 0
    for line in (x for x in expected.splitlines() if x.strip()):
        match = next((k for k in range(start, len(lines)) if _line_matches(line, lines[k])), None)
        assert match is not None, f"{where}: the page shows\n  {line}\nbut the command printed\n{printed}"
        start = match + 1


def run_block(block: Block, folder: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
    if block.kind == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        argv = ["bash", "-e", "-c", runnable(block.code)]
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{block.page}:{block.line} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """The README's first command, run once: the demo's output folder and what it printed."""
    first = next(b for b in blocks_of(ROOT / "README.md") if b.kind == "bash")
    assert "demo --out demo_output" in first.code, "the README's first command is the demo"
    folder = tmp_path_factory.mktemp("demo")
    printed = run_block(first, folder)
    return folder / "demo_output", printed


def test_blocks_are_found_and_the_setup_commands_are_two():
    readme = blocks_of(ROOT / "README.md")
    setup = [b for b in readme if b.kind == "bash" and "python3 -m venv" in b.code]
    assert len(setup) >= 2 and "demo --out demo_output" in setup[0].code and "pytest" in setup[1].code
    assert runnable(setup[0].code) == f"{BIN}/bayes-simfluence demo --out demo_output"
    assert runnable(setup[1].code) is None
    assert _line_matches("bayes 0.00115 …", "bayes 0.001151 12.7") and not _line_matches("a 0.5", "a 0.6")


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the first page's time includes the demo's set-up (about 11 minutes in CI)
@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_command_and_snippet_of_the_page_runs_and_prints_what_it_shows(page, demo, tmp_path):
    found = blocks_of(page)
    shutil.copytree(demo[0], tmp_path / "demo_output")
    skip_first = page.name == "README.md"  # the demo itself: run by the fixture, its output checked below
    printed: dict[int, str] = {}
    for index, block in enumerate(found):
        if "<!-- long" in block.marks or block.kind not in ("bash", "python", "text"):
            continue
        if block.kind == "text":
            if "<!-- output -->" in block.marks:
                assert printed, f"{page.name}:{block.line}: an output block with no command run before it"
                check_output(block.code, printed[max(printed)], f"{page.name}:{block.line}")
            continue
        if skip_first and block.kind == "bash":
            skip_first = False
            printed[index] = demo[1]
            continue
        if block.kind == "bash" and runnable(block.code) is None:
            continue
        printed[index] = run_block(block, tmp_path)
