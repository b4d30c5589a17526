"""The core works without the ``collect`` extra, and the package's imports form no circle.

``pip install -e .`` (no extras) must give every modelling command (evaluate, fit, simulate,
compare, plot) and their Python API; only ``collect`` and ``demo`` need torch, transformers and
datasets, and they say so in one line. CI's Python 3.12 job runs the whole core suite in a real
core-only environment; this test also blocks the extra's packages inside any environment, so
the 3.11 job (which has them installed) checks the same thing.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from bayes_simfluence.synthetic import synthetic_runs

PACKAGE = Path(__file__).resolve().parents[1] / "bayes_simfluence"
EXTRA_PACKAGES = ("torch", "transformers", "datasets", "accelerate")

# Runs in a fresh interpreter whose path finder does not see the extra's packages (exactly as if
# they were not installed: ``find_spec`` gives None, ``import`` raises ModuleNotFoundError), then
# each command runs through the CLI's ``main`` and its exit code and stderr are reported.
SCRIPT = """
import contextlib, importlib.machinery, io, json, sys

class WithoutExtras:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    find_distributions = importlib.machinery.PathFinder.find_distributions
    invalidate_caches = importlib.machinery.PathFinder.invalidate_caches

sys.meta_path[:] = [WithoutExtras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from bayes_simfluence.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    results.append({{"argv": argv, "code": code, "stderr": err.getvalue()}})
loaded = sorted({{m.split(".")[0] for m, v in sys.modules.items() if v is not None}} & set({blocked!r}))
print(json.dumps({{"results": results, "loaded": loaded}}))
"""


def _run_without_extras(commands: list[list[str]], cwd: Path) -> dict:
    script = SCRIPT.format(blocked=EXTRA_PACKAGES)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_modelling_command_runs_without_the_collect_extra(tmp_path):
    runs, _ = synthetic_runs(n_train=10, n_tests=3, n_runs=10, n_steps=12, batch_size=2, effect_scale=0.05, seed=3)
    train, held = runs.split(3)
    runs.save(tmp_path / "all.npz")
    train.save(tmp_path / "train.npz")
    held.save(tmp_path / "held.npz")
    bayes = ["-o", "num_draws=40", "-o", "progress=false"]  # the default Bayesian path: bayes-grid at this size
    commands = [
        ["evaluate", "--runs", "all.npz", "--heldout-runs", "3", "-m", "mean", "-m", "linear", "--json"],
        ["fit", "--train", "train.npz", "-m", "linear", "--out", "linear.npz"],
        ["fit", "--train", "train.npz", "-m", "bayes", *bayes, "--out", "posterior.nc"],
        ["simulate", "--simulator", "posterior.nc", "--curricula", "held.npz", "--out", "simulated.npz"],
        ["compare", "--simulator", "posterior.nc", "--curricula", "held.npz:0", "--curricula", "held.npz:1",
         "--draws", "40", "--plot", "compare.png"],
        ["compare", "--simulator", "linear.npz", "--curricula", "held.npz:0", "--leave-out", "3"],
        ["plot", "trajectories", "--simulator", "posterior.nc", "--runs", "held.npz", "--draws", "40",
         "--plot", "bands.png"],
        ["plot", "attributions", "--simulator", "posterior.nc", "--curricula", "held.npz:0", "--draws", "40",
         "--plot", "effects.png"],
        ["collect", "--model", "m", "--train", "t.jsonl", "--test", "t.jsonl", "--out", "runs.npz"],
        ["demo", "--out", "demo"],
    ]
    report = _run_without_extras(commands, tmp_path)
    assert report["loaded"] == []
    for result in report["results"][:-2]:
        assert result["code"] == 0, (result["argv"], result["stderr"][-2000:])
    for name in ("collect", "demo"):
        result = next(r for r in report["results"] if r["argv"][0] == name)
        assert result["code"] == 2
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"]
        assert f"'{name}'" in lines[0] and "collect extra" in lines[0] and "bayes-simfluence[collect]" in lines[0]
    for output in ("linear.npz", "posterior.nc", "simulated.npz", "compare.png", "bands.png", "effects.png"):
        assert (tmp_path / output).stat().st_size > 0, output
    assert not (tmp_path / "demo").exists() and not (tmp_path / "runs.npz").exists()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def test_the_package_imports_form_no_circle():
    graph = _graph()
    finished: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if module.startswith(target + "."):
                continue  # a module importing its own package's re-exports
            assert target not in path, "import circle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in finished:
                visit(target, path + [target])
        finished.add(module)

    for module in sorted(graph):
        visit(module, [module])


#: the only modules allowed to import the collect layer (lazily, inside the commands that need it).
COLLECT_USERS = ("bayes_simfluence.collect", "bayes_simfluence.commands.collect", "bayes_simfluence.commands.demo")


def test_the_core_never_imports_the_collect_layer_or_its_packages():
    for module, targets in _graph().items():
        if module.startswith(COLLECT_USERS):
            continue
        assert not [t for t in targets if t.startswith("bayes_simfluence.collect")], module
        tree = ast.parse((PACKAGE.parent / (module.replace(".", "/"))).with_suffix(".py").read_text()
                         if not (PACKAGE.parent / module.replace(".", "/")).is_dir()
                         else (PACKAGE.parent / module.replace(".", "/") / "__init__.py").read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & set(EXTRA_PACKAGES), (module, imported & set(EXTRA_PACKAGES))
