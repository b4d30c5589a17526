"""The scale study's tables: rows fitted with other settings or with the feature prior keep their own
lines and their own averages over fit windows."""

from experiment_module import load_experiment

scale_study = load_experiment("scale_study")


def _row(window: int, coverage: float, features: bool = False, options: dict | None = None) -> dict:
    scores = {"diff_coverage_90": coverage, "diff_coverage_50": 0.5, "brier": 0.15, "ordering_accuracy": 0.9,
              "pairs_gap": 100, "diff_rmse": 0.7, "diff_sd": 1.0}
    return {"pool": 200, "optimizer": "adam", "method": "bayes-svi", "path": "bayes-svi", "window": window,
            "fit_runs": 40, "heldout_runs": 120, "tests": 10, "fit_seconds": 30.0, "lds": 0.8, "lds_linear": 0.6,
            "sharpness": 0.7, "seed_floor": 0.27, "predictive": {"new-run": scores}, "features": features,
            "options": {"progress": False, **(options or {})}}


def test_rows_with_features_or_options_keep_their_own_lines_and_window_means():
    rows = {f"plain{w}": _row(w, 0.80) for w in (0, 1)}
    rows |= {f"featured{w}": _row(w, 0.90 + 0.02 * w, features=True) for w in (0, 1)}
    rows["memory"] = _row(0, 0.70, options={"memory": "none"})
    text = scale_study.markdown(rows)
    assert "| bayes-svi (bayes-svi) |" in text and "| bayes-svi + features (bayes-svi) |" in text
    assert "| bayes-svi memory=none (bayes-svi) |" in text
    assert "| 200 | Adam + dropout | bayes-svi | 2 | 0.80 (0.80-0.80) |" in text
    assert "| 200 | Adam + dropout | bayes-svi + features | 2 | 0.91 (0.90-0.92) |" in text
