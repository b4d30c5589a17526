"""The retraining study's run bookkeeping: fit windows partition the runs, and the window summary
reports what each window scored (``experiments/retraining_study.py``)."""

import numpy as np
import pytest
from experiment_module import load_experiment

study = load_experiment("retraining_study")


def test_window_zero_is_the_original_protocol_and_windows_partition_the_runs():
    fit, held = study.window_runs(0, 40, 40)
    assert fit.tolist() == list(range(40)) and held.tolist() == list(range(40, 80))
    fitted = []
    for window in range(4):
        fit, held = study.window_runs(window, 40, 120)
        assert len(fit) == 40 and len(held) == 120
        assert np.intersect1d(fit, held).size == 0 and np.union1d(fit, held).tolist() == list(range(160))
        fitted.append(fit)
    assert np.sort(np.concatenate(fitted)).tolist() == list(range(160))  # every run is fitted in one window


def test_a_window_past_the_runs_is_refused_with_the_limit():
    with pytest.raises(ValueError, match="at most 4 windows"):
        study.window_runs(4, 40, 120)


def _result(window: int, coverage: float, lds: float) -> dict:
    scores = dict.fromkeys((name for _, name in study.WINDOW_SCORES), 0.5)
    scores["diff_coverage_90"] = coverage
    return {"window": window, "lds": lds, "lds_linear": 0.8, "predictive": {"new-run": scores}}


def test_window_summary_gives_each_scores_mean_and_range_over_the_windows():
    results = {"sets": {"a": _result(0, 0.8, 0.9), "a_window1": _result(1, 0.9, 0.7), "a_window2": _result(2, 1.0, 0.8),
                        "b": _result(0, 0.5, 0.5)}}  # b was studied on one window only: no summary row
    assert list(study.window_groups(results)) == ["a"]
    row = next(line for line in study.window_summary(results) if line.startswith("| `a`"))
    assert "| 3 |" in row
    assert "0.900 (0.800-1.000)" in row  # 90% coverage over the three windows
    assert "0.800 (0.700-0.900) (0.800)" in row  # LDS, and the ridge fit's beside it
