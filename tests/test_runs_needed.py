"""The runs-needed study's plumbing: cached runs grow by collecting only the missing ones, and the
summary over fit windows averages what the windows measured."""

import numpy as np

from bayes_simfluence.runs import Runs

from experiment_module import load_experiment

runs_needed = load_experiment("runs_needed")


def _collector(calls: list):
    """Runs whose losses carry their own index (run r starts at loss r), as a seeded collection would."""
    def collect(first: int, count: int) -> Runs:
        calls.append((first, count))
        index = np.arange(first, first + count)
        curricula = np.tile(np.arange(2, dtype=np.int32), (count, 3, 1)) + (index % 2)[:, None, None]  # [runs, 3, 2]
        losses = np.repeat(index[:, None, None], 4, axis=1) + np.arange(4)[None, :, None] * 0.1  # [runs, 4, 1]
        return Runs.create(curricula, losses.astype(float), n_train=3)
    return collect


def test_cached_runs_collect_only_the_missing_runs_and_keep_the_order(tmp_path):
    calls, path = [], tmp_path / "runs.npz"
    first = runs_needed.cached_runs(path, 3, _collector(calls))
    longer = runs_needed.cached_runs(path, 5, _collector(calls))
    shorter = runs_needed.cached_runs(path, 4, _collector(calls))
    assert calls == [(0, 3), (3, 2)]
    assert longer.losses[:, 0, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(longer.losses[:3], first.losses)
    np.testing.assert_array_equal(longer.curricula[3:], _collector([])(3, 2).curricula)
    assert shorter.n_runs == 4 and Runs.load(path).n_runs == 5


def test_over_windows_averages_the_forty_run_rows_fitted_in_several_windows():
    def row(window, protocol, coverage, **extra):
        return {"fit_runs": 40, "window": window, "protocol": protocol, "features": True, "lds": 0.8,
                "diff_coverage_90": coverage, "diff_coverage_50": 0.5, "sharpness": 0.4, "brier": 0.1,
                "final_coverage_90": 0.9, **extra}

    rows = [row(0, "unseen", 0.99, guard_residual_sd=0.04, heldout_miss_sd=0.03),
            row(1, "unseen", 0.85, guard_residual_sd=0.02, heldout_miss_sd=0.03),
            row(0, "seen", 0.7), {**row(0, "seen", 0.5), "fit_runs": 10}]
    lines = runs_needed.over_windows(rows)
    (unseen,) = [line for line in lines if line.startswith("| unseen")]
    assert "| 0, 1 |" in unseen and "| 0.92 (0.85-0.99) |" in unseen and "0.030 (0.020-0.040) / 0.030 (0.030-0.030)" in unseen
    assert not [line for line in lines if line.startswith("| seen")]  # one window of 40 runs: nothing to average
    assert runs_needed.over_windows(rows[2:]) == []


def test_matched_heldout_runs_have_the_fitted_runs_kind_with_unseen_examples_among_them(tmp_path, monkeypatch):
    """Each matched held-out run trains on as many distinct examples as a fitted run of the unseen
    protocol (80% of 80% of the pool), drawn from the whole pool, so the unseen examples are in it
    about 0.64 times their number; the fitted runs never use them."""
    scale = runs_needed.scale

    def make_runs(pool, n_tests, n_runs, optimizer="sgd", seed=0, allowed=None, first_run=0):
        allowed = np.arange(pool) if allowed is None else np.asarray(allowed)
        curricula = np.stack([scale.random_curriculum(np.random.default_rng([seed, r]), allowed)
                              for r in range(first_run, first_run + n_runs)])
        return Runs.create(curricula, np.ones((n_runs, curricula.shape[1] + 1, n_tests)), n_train=pool)

    monkeypatch.setattr(scale, "make_runs", make_runs)
    monkeypatch.setattr(runs_needed, "DATA", tmp_path)
    pool, unseen = 200, runs_needed.unseen_examples(200)
    matched = runs_needed.matched_heldout_runs(pool, 2, "sgd", 30)
    fitted = runs_needed.unseen_runs(pool, 2, "sgd", 30)
    distinct = [len(np.unique(c)) for c in matched.curricula]
    assert distinct == [len(np.unique(c)) for c in fitted.curricula] == [128] * 30
    assert not np.isin(fitted.curricula, unseen).any()
    in_matched = [np.isin(unseen, c).sum() for c in matched.curricula]
    assert 22 < np.mean(in_matched) < 29.5 and min(in_matched) > 10  # 0.64 x 40 = 25.6 on average
    assert len({tuple(np.unique(c)) for c in matched.curricula}) == 30  # each run its own examples
    np.testing.assert_array_equal(runs_needed.matched_heldout_runs(pool, 2, "sgd", 30).curricula, matched.curricula)


def test_other_unseen_sets_have_their_own_examples_runs_and_cache(tmp_path, monkeypatch):
    """Set 0 is the study's fixed 20%; set k >= 1 another random 20%, held out of its own fitted runs
    (other curriculum seeds, another cache file), so fits on sets are replications over which examples
    are new."""
    scale = runs_needed.scale

    def make_runs(pool, n_tests, n_runs, optimizer="sgd", seed=0, allowed=None, first_run=0):
        curricula = np.stack([scale.random_curriculum(np.random.default_rng([seed, r]), np.asarray(allowed))
                              for r in range(first_run, first_run + n_runs)])
        return Runs.create(curricula, np.ones((n_runs, curricula.shape[1] + 1, n_tests)), n_train=pool)

    monkeypatch.setattr(scale, "make_runs", make_runs)
    monkeypatch.setattr(runs_needed, "DATA", tmp_path)
    sets = [runs_needed.unseen_examples(200, k) for k in range(3)]
    np.testing.assert_array_equal(sets[0], runs_needed.unseen_examples(200))
    assert all(len(s) == 40 for s in sets) and len({tuple(s) for s in sets}) == 3
    runs = [runs_needed.unseen_runs(200, 2, "sgd", 5, k) for k in range(3)]
    for unseen, fitted in zip(sets, runs):
        assert not np.isin(fitted.curricula, unseen).any()
        assert fitted.meta["unseen"] == unseen.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "runs_needed_unseen_200_sgd_set1_tests2.npz", "runs_needed_unseen_200_sgd_set2_tests2.npz",
        "runs_needed_unseen_200_sgd_tests2.npz"]


def test_each_model_keeps_its_own_rows_section_and_figure():
    """Rows of the script's default model (no memory, variant linear) keep their plain keys and figure;
    another model's rows get their own section instead of overwriting them."""
    assert runs_needed.model_label({"memory": "none"}) == ""
    assert runs_needed.model_label({"memory": "none", "variant": "auto"}) == "auto"
    assert runs_needed.model_label({"memory": "geometric"}) == "memory-geometric"
    assert runs_needed.figure_name(200, "sgd", "") == "runs_needed.png"
    assert runs_needed.figure_name(1000, "adam", "memory-geometric") == "runs_needed_1000_adam_memory-geometric.png"
    row = {"pool": 200, "optimizer": "sgd", "protocol": "seen", "fit_runs": 40, "features": True, "window": 0,
           "method": "bayes-grid", "path": "bayes-grid", "heldout_runs": 40, "pairs": 780, "tests": 10,
           "feature_seconds": 1.0, "command": "c", "warnings": [], "predictive": "new-run", "lds": 0.8,
           "lds_interval": [0.7, 0.9], "lds_linear": 0.8, "diff_coverage_90": 0.9, "diff_coverage_50": 0.5,
           "sharpness": 0.5, "brier": 0.1, "final_coverage_90": 0.9, "final_coverage_50": 0.5, "fit_seconds": 1.0}
    rows = {"plain": {**row, "options": {"memory": "none"}},
            "memory": {**row, "options": {"memory": "geometric"}, "lds": 0.7}}
    text = runs_needed.markdown(rows)
    assert "## Pool 200, plain SGD\n" in text and "## Pool 200, plain SGD, optimiser memory `geometric`" in text
    assert "| 0.800 [0.700, 0.900] |" in text and "| 0.700 [0.700, 0.900] |" in text
    assert "runs_needed.png" in text and "runs_needed_memory-geometric.png" in text
