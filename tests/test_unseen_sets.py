"""The unseen-sets study's tables: a line per set and held-out kind, and the mean (range) over sets."""

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
