"""The unseen-sets study's tables: a line per set and held-out kind, and the mean (range) over sets."""

import pytest

from experiment_module import load_experiment

unseen_sets = load_experiment("unseen_sets")


def _row(unseen_set: int, cover: float, shift: float) -> dict:
    scores = {"final_coverage_90": cover, "diff_coverage_90": 0.9, "diff_coverage_50": 0.5, "lds": 0.7,
              "heldout_miss_mean": shift, "heldout_miss_sd": 0.05}
    return {**scores, "guard_residual_sd": 0.04, "unseen_set": unseen_set,
            "matched": {**scores, "final_coverage_90": cover - 0.1, "guard_residual_sd": 0.04}}


def test_summary_lines_average_each_kind_over_the_sets():
    lines = unseen_sets.summary_lines([_row(1, 0.95, -0.01), _row(0, 0.85, 0.03)])
    matched = [line for line in lines if "| matched |" in line]
    pool = [line for line in lines if "| pool |" in line]
    assert [line.split(" | ")[0] for line in matched] == ["| 0", "| 1", "| mean of 2"]
    assert matched[0].split(" | ")[2] == "0.75" and pool[0].split(" | ")[2] == "0.85"
    assert "**0.80** (0.75-0.85)" in matched[-1] and "**0.010** (-0.010-0.030)" in matched[-1]
    assert "**0.90** (0.85-0.95)" in pool[-1]
    assert len(unseen_sets.summary_lines([_row(0, 0.9, 0.0)])) == 4  # header, rule, one line per kind: no mean


def test_the_control_is_shown_after_the_sets_and_left_out_of_their_mean():
    lines = unseen_sets.summary_lines([_row(unseen_sets.CONTROL, 0.55, 0.5), _row(0, 0.85, 0.03), _row(1, 0.95, -0.01)])
    matched = [line for line in lines if "| matched |" in line]
    assert [line.split(" | ")[0] for line in matched] == ["| 0", "| 1", "| none (control)", "| mean of 2"]
    assert "**0.80** (0.75-0.85)" in matched[-1]


def test_against_the_control_the_table_shows_the_misses_correlation_and_the_unseen_part():
    """Per-run misses of a set's fit and of the control on the same runs: their correlation and the sd
    of their difference are the set's, and the control's own line shows neither."""
    control, own = _row(unseen_sets.CONTROL, 0.8, 0.0), _row(0, 0.8, 0.0)
    control["matched"]["heldout_miss"] = [0.0, 0.1, -0.1, 0.2]
    own["matched"]["heldout_miss"] = [0.01, 0.1, -0.11, 0.2]  # differences 0.01, 0, -0.01, 0: sd 0.0082
    lines = unseen_sets.summary_lines([control, own])
    matched = {line.split(" | ")[0]: line.split(" | ") for line in lines if "| matched |" in line}
    columns = [title for _, title, _ in unseen_sets.COLUMNS]
    correlation = 2 + columns.index("miss corr. with control's")
    part = 2 + columns.index("sd of miss - control's")
    assert matched["| 0"][correlation] == "1.00" and matched["| 0"][part] == "0.008"
    assert matched["| none (control)"][correlation] == "-" and matched["| none (control)"][part] == "-"
    pool = [line for line in lines if "| pool |" in line]
    assert pool[0].split(" | ")[correlation] == "-"  # no per-run misses stored for that kind


def test_the_aggregate_effect_compares_each_sets_change_from_its_baseline_with_the_predicted_change():
    """Actual change: held-out mean less the set's fitted mean; predicted: that less the miss's mean.
    Changes twice the predicted ones give slope 2 and correlation 1; the control is left out."""
    rows = []
    for unseen_set, (baseline, predicted) in enumerate([(0.50, 0.01), (0.40, -0.02), (0.45, 0.03)]):
        row = _row(unseen_set, 0.8, 0.0)
        row["fitted_mean_final_loss"] = baseline
        row["matched"]["heldout_mean_final_loss"] = baseline + 2 * predicted
        row["matched"]["heldout_miss_mean"] = predicted  # actual 2p less predicted p
        rows.append(row)
    control = {**_row(unseen_sets.CONTROL, 0.8, 0.5), "fitted_mean_final_loss": 9.0}
    control["matched"]["heldout_mean_final_loss"] = 0.0
    aggregate = unseen_sets.aggregate_effect(rows + [control])
    assert aggregate["sets"] == 3
    assert aggregate["slope"] == pytest.approx(2.0) and aggregate["correlation"] == pytest.approx(1.0)
    assert unseen_sets.aggregate_effect(rows[:2]) is None  # too few sets
