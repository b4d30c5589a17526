"""Import a script of ``experiments/`` (not a package) by its name, for the tests of its helpers."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_experiment(name: str) -> ModuleType:
    """The module ``experiments/NAME.py``, registered as ``experiments_NAME``."""
    folder = Path(__file__).resolve().parents[1] / "experiments"
    if str(folder) not in sys.path:  # the scripts import each other, as they do when run from there
        sys.path.insert(0, str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
