"""The experiment script's plumbing: options parse, tables report unavailable methods instead of hiding them."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "run_experiment.py"


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("run_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_options_reach_their_method(experiment, tmp_path):
    config, out, refreshed = experiment.parse_args(["--out", str(tmp_path), "--runs", "6", "--methods", "mean,bayes-svi",
                                         "--option", "bayes-svi:num_steps=500", "--option", "bayes-svi:guide=lowrank"])
    assert out == tmp_path and refreshed == () and config.runs == 6 and config.methods == ("mean", "bayes-svi")
    assert config.method_options == {"bayes-svi": {"num_steps": 500, "guide": "lowrank"}}
    assert config.collect_config().runs == 6
    with pytest.raises(SystemExit):
        experiment.parse_args(["--option", "num_steps=5"])


def test_tables_mark_the_best_and_list_failures(experiment, tmp_path):
    scores = {"mean": {"all_steps_mse": 0.2, "final_step_mse": 0.3, "spearman": 0.9},
              "bayes-svi": {"all_steps_mse": 0.1, "final_step_mse": 0.4, "crps": 0.05}}
    table = experiment.write_tables(scores, {"tracin": "ValueError: no scores"}, tmp_path)
    assert "| bayes-svi | **0.1** | 0.4 |" in table and "| mean | 0.2 | **0.3** |" in table
    assert "not run: ValueError: no scores" in table
    csv_text = (tmp_path / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("method,all_steps_mse") and "not run" in csv_text
    # a refresh reads the rows that ran back, as numbers, empty cells as NaN
    read = experiment.read_scores(tmp_path / "results.csv")
    assert set(read) == {"mean", "bayes-svi"} and read["bayes-svi"]["crps"] == 0.05
    assert np.isnan(read["mean"]["crps"]) and read["mean"]["final_step_mse"] == 0.3
