"""The model without per-example residual effects (``-o residual=false``): effects are the common
level and the feature regression alone.

Oracles: the marginal likelihood written out from the model as a dense Gaussian; runs generated
with additive effects ``B = phi beta`` exactly (no residual; the multiplicative ones small noise)
and, for the check that the option does something, runs whose effects have a large residual the
features cannot explain. Fresh runs from the same generating process score the roll-outs.
"""

import numpy as np
import pytest
from test_bayes_grid import grid_log_density
from test_feature_prior import dense_evidence_of, featured_data, featured_runs, written_out_log_density
from test_variant_auto import stacking_with_predictions

import bayes_simfluence as bsf
from bayes_simfluence.bayes.methods import default_path, ranking_check
from bayes_simfluence.bayes.model import ModelConfig
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.runs import Runs
from bayes_simfluence.settings import parse_all
from bayes_simfluence.validation import InputError

BETA = (0.02, -0.01)


def fresh_error(posterior, fresh) -> float:
    predicted = posterior.simulate(fresh.curricula, fresh.initial_losses)
    return float(np.mean((predicted - fresh.losses) ** 2))


@pytest.fixture(scope="module")
def featured():
    return featured_data()


@pytest.mark.parametrize("variant", ["linear", "additive"])
@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_density_without_residuals_is_the_prior_times_the_dense_marginal_likelihood(featured, variant, decay):
    """Written out from the model with ``w = phi beta`` exactly: ``y`` has covariance ``sigma^2 (Omega +
    level + sum_c (feature_prior / rms_c)^2 (X phi_c)(X phi_c)^T)`` with no ``s^2 X X^T`` term, whatever
    the effect scale (only its prior is left). The grid computes it from batch sums of the features,
    never from the per-example counts, over runs with empty batch slots and with optimiser memory."""
    config = ModelConfig(memory="geometric", variant=variant, features=True, residual_effects=False)
    for m in range(featured.n_tests):
        for sigma, scale in [(0.05, 0.02), (0.02, 0.3)]:
            got = grid_log_density(featured, config, m, decay, sigma, scale, evidence_of=dense_evidence_of)
            assert got == pytest.approx(written_out_log_density(featured, config, m, decay, sigma, scale), abs=1e-6)


def test_without_residuals_bayes_runs_the_grid_at_any_pool():
    """The grid's cost without residual effects does not grow with the pool, so ``-m bayes`` keeps the
    calibrated path where with them it would leave it; the fit runs at a pool whose dense counts
    the statistics never form, and its effects are the generating regression."""
    runs, b, phi = featured_runs(n_train=3000, n_unseen=0, n_runs=12, n_steps=60, batch_size=8, residual=0.0,
                                 beta=BETA, seed=7)
    options = parse_all("bayes", {"guard": "false", "memory": "none"})
    assert default_path(runs, {**options, "residual": True})[0] != "grid"
    path, why = default_path(runs, {**options, "residual": False})
    assert path == "grid", why
    posterior = bsf.fit(runs, method="bayes", residual=False, guard=False, memory="none", num_draws=100,
                        progress=False)
    assert posterior.info["method"] == "grid"
    effects = posterior.additive_effects().mean(0)  # [tests, n_train]
    assert np.corrcoef(effects.reshape(-1), b.reshape(-1))[0, 1] > 0.99


@pytest.mark.parametrize("method", ["bayes-grid", "bayes-cg"])
def test_without_residuals_the_effects_are_the_generating_regression(method, tmp_path):
    """On runs whose additive effects are the regression exactly: every draw's ``B`` is its level plus
    ``phi beta`` (no residual left), the coefficients are the generating ones, fresh runs roll out as
    well as with the residuals, and the setting survives save and load."""
    runs, b, phi = featured_runs(residual=0.0, n_runs=24, beta=BETA, seed=3)
    train, fresh = runs.split(16)
    options = dict(method=method, guard=False, memory="none", num_draws=200, progress=False)
    without = bsf.fit(train, residual=False, **options)
    assert not without.config.residual_effects
    effects = without.additive_effects()  # [draws, tests, n_train], loss units
    centred = effects - effects.mean(axis=2, keepdims=True)
    coefficients, *_ = np.linalg.lstsq(phi - phi.mean(0), centred.reshape(-1, phi.shape[0]).T, rcond=None)
    left = centred - np.einsum("ik,kn->ni", phi - phi.mean(0), coefficients).reshape(centred.shape)
    assert np.abs(left).max() < 1e-6 * np.abs(centred).max()  # nothing but the regression per draw
    slopes = coefficients.T.reshape(effects.shape[:2] + (2,))  # [draws, tests, 2]
    mean, sd = slopes.mean(0), slopes.std(0)
    assert np.all(np.abs(mean - np.array(BETA)) < 4 * sd + 0.05 * np.abs(np.array(BETA))), (mean, sd)
    full = bsf.fit(train, **options)
    assert np.mean(full.hyper["effect_scale"]) > 1e3 * np.mean(without.hyper["effect_scale"])
    assert fresh_error(without, fresh) <= 1.05 * fresh_error(full, fresh)
    without.save(tmp_path / "posterior.nc")
    assert not BayesianSimfluence.load(tmp_path / "posterior.nc").config.residual_effects


def test_bayes_cg_without_residuals_runs_the_exact_grid_and_says_so(tmp_path, capsys):
    """Without residual effects there is nothing for bayes-cg's Lanczos rules to approximate: it runs
    bayes-grid's exact statistics, and ``fit`` says which ran and why."""
    from bayes_simfluence.cli import main

    runs, _, _ = featured_runs(n_train=24, n_unseen=0, n_runs=8, n_steps=20, seed=6)
    runs.save(tmp_path / "train.npz")
    out = tmp_path / "posterior.nc"
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--method", "bayes-cg", "-o", "residual=false",
                 "-o", "guard=false", "-o", "memory=none", "--out", str(out)]) == 0
    assert "fitted 'bayes-cg' (as bayes-grid: bayes-cg without residual effects: bayes-grid's exact statistics" \
        in capsys.readouterr().out
    assert BayesianSimfluence.load(out).method == "grid"


def test_residuals_the_features_cannot_explain_are_lost_without_them():
    """The option changes the model: where each example's own effect is large and unrelated to the
    features, the fit without residuals rolls fresh runs out clearly worse."""
    runs, _, _ = featured_runs(residual=0.03, n_runs=24, beta=BETA, seed=4)
    train, fresh = runs.split(16)
    options = dict(method="bayes-grid", guard=False, memory="none", num_draws=100, progress=False)
    assert fresh_error(bsf.fit(train, residual=False, **options), fresh) > 1.5 * fresh_error(bsf.fit(train, **options), fresh)


def test_backends_that_fit_only_residual_effects_refuse_the_option():
    runs, _, _ = featured_runs(n_train=12, n_unseen=2, n_runs=6, n_steps=10)
    for method in ("bayes-svi", "bayes-nuts", "bayes-exact"):
        with pytest.raises(InputError, match=rf"residual: {method} fits only the model with per-example residual "
                                             r"effects \(bayes-grid and bayes-cg fit it without\)"):
            bsf.fit(runs, method=method, residual=False, guard=False, progress=False)


def test_auto_keeps_the_residuals_unless_the_model_without_them_ranks_better_by_a_standard_error():
    """The rule on held-out predictions whose rankings are constructed: tied, the residual effects
    stay (the default); the model without them ranked right and the full one unrelated to the runs:
    off; the other way round: on."""
    runs, _, _ = featured_runs(n_runs=40)
    observed = runs.losses[:, -1]
    noise = np.random.default_rng(1).standard_normal(observed.shape)
    good = stacking_with_predictions(runs, observed + 0.1 * observed.std(0) * noise)
    unrelated = stacking_with_predictions(runs, noise)
    labels = {True: "residual effects", False: "no residual effects"}
    assert ranking_check({True: good, False: good}, runs, labels)["chosen"] is True
    better = ranking_check({True: unrelated, False: good}, runs, labels)
    assert better["chosen"] is False and better["gain_no residual effects"] > 3 * better["gain_no residual effects_se"]
    assert "with no residual effects (residual effects" in better["reason"]
    assert ranking_check({True: good, False: unrelated}, runs, labels)["chosen"] is True


def test_auto_runs_the_check_with_features_and_the_guard_and_says_why_not_elsewhere(tmp_path, capsys):
    from bayes_simfluence.cli import main

    runs, _, _ = featured_runs(n_runs=16, n_steps=30, seed=5)
    runs.save(tmp_path / "train.npz")
    out = tmp_path / "posterior.nc"
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--method", "bayes-grid", "-o", "residual=auto",
                 "-o", "memory=none", "-o", "run_state=false", "--out", str(out)]) == 0
    line = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("residual effects:"))
    loaded = bsf.load(out)
    check = loaded.info["residual_check"]
    assert set(check["heldout_lds"]) == {"residual effects", "no residual effects"} and check["runs"] == 16
    assert loaded.config.residual_effects is check["chosen"]
    assert line.startswith(f"residual effects: {'on' if check['chosen'] else 'off'} (auto: LDS on the guard's 16")
    plain = Runs.create(runs.curricula, runs.losses, runs.n_train)
    without = bsf.fit(plain, method="bayes-grid", residual="auto", guard=False, memory="none", progress=False)
    assert without.config.residual_effects and "no feature prior" in without.info["residual_off"]
    unguarded = bsf.fit(runs, method="bayes-grid", residual="auto", guard=False, memory="none", progress=False)
    assert unguarded.config.residual_effects and "guard=false" in unguarded.info["residual_off"]
    default = bsf.fit(runs, method="bayes-grid", guard=False, memory="none", progress=False)  # auto, with features
    assert default.config.residual_effects and "guard=false" in default.info["residual_off"]
    named = bsf.fit(runs, method="bayes-grid", residual=True, guard=False, memory="none", progress=False)
    assert named.config.residual_effects and not {"residual_off", "residual_check"} & set(named.info)
    quiet = bsf.fit(plain, method="bayes-grid", guard=False, memory="none", progress=False)  # nothing to choose
    assert quiet.config.residual_effects and not {"residual_off", "residual_check"} & set(quiet.info)


def test_test_blocks_keep_the_residual_effects_by_default_and_say_why():
    from bayes_simfluence.bayes.blocks import fit_in_blocks
    from bayes_simfluence.methods import FitContext

    runs, _, _ = featured_runs(n_runs=16, n_steps=30, seed=5)
    context = FitContext(options={"memory": "none", "guard": False})
    merged = fit_in_blocks("bayes-grid", runs, context, blocks=2, progress=False)
    assert merged.config.residual_effects and merged.config.features
    assert merged.info["residual_off"].startswith("test blocks:")
    named = fit_in_blocks("bayes-grid", runs, FitContext(options={**context.options, "residual": False}), blocks=2,
                          progress=False)
    assert not named.config.residual_effects and "residual_off" not in named.info


@pytest.fixture
def svi_scale(monkeypatch):
    """``-m bayes`` thresholds under which the 300-example runs of these tests take bayes-svi with
    residual effects (as runs with many more runs x steps do by default: the threshold of bayes-cg
    counts those rows, not the pool) while bayes-grid fits the model without them."""
    from bayes_simfluence.bayes import grid, methods

    steps = 16 * 40
    with_residuals = grid.grid_cost(300, steps, ModelConfig(memory="none", features=True), 1000)
    without = grid.grid_cost(300, steps, ModelConfig(memory="none", features=True, residual_effects=False), 1000)
    monkeypatch.setattr(methods, "AUTO_GRID_FLOPS_PER_TEST", (with_residuals * without) ** 0.5)
    monkeypatch.setattr(methods, "AUTO_CG_ROWS_PER_TEST", 0.0)


def test_where_bayes_runs_svi_auto_keeps_its_residual_effects_the_features_cannot_explain(svi_scale):
    """Where ``-m bayes`` runs bayes-svi, ``residual=auto`` cross-fits it (with residual effects)
    against bayes-grid without them; on runs whose effects are mostly each example's own, the
    grid's held-out ranking is far worse and bayes-svi is kept."""
    from bayes_simfluence.bayes.methods import _residual_across_backends

    runs, _, _ = featured_runs(n_train=300, n_unseen=0, n_runs=16, n_steps=40, residual=0.03, seed=11)
    options = parse_all("bayes", {"memory": "none"})
    assert default_path(runs, options)[0] == "svi" and _residual_across_backends("svi", runs, options)
    for named in ({"residual": True}, {"guard": False}, {"features": False}):
        assert not _residual_across_backends("svi", runs, parse_all("bayes", {"memory": "none", **named}))
    plain = Runs.create(runs.curricula, runs.losses, runs.n_train)
    assert not _residual_across_backends("svi", plain, options)
    posterior = bsf.fit(runs, method="bayes", memory="none", num_steps=500, progress=False)
    check = posterior.info["residual_check"]
    assert check["chosen"] is True and posterior.method == "svi" and posterior.config.residual_effects
    lds = check["heldout_lds"]
    assert lds["residual effects on bayes-svi"] > lds["no residual effects on bayes-grid"] + 0.1, lds
    assert "residual=auto chose bayes-svi by the guard's held-out ranking" in posterior.info["chosen_by"]


def test_where_bayes_runs_svi_auto_takes_the_grid_without_residuals_when_it_ranks_better(svi_scale, tmp_path,
                                                                                         capsys):
    """The other way: on runs generated from the feature regression alone, and a bayes-svi stopped
    after 20 steps (far from its optimum), the grid without residuals ranks the held-out runs
    better, is fitted, and ``fit`` says which backend ran and why."""
    from bayes_simfluence.cli import main

    runs, b, _ = featured_runs(n_train=300, n_unseen=0, n_runs=16, n_steps=40, residual=0.0, seed=11)
    runs.save(tmp_path / "train.npz")
    out = tmp_path / "posterior.nc"
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--method", "bayes", "-o", "memory=none",
                 "-o", "num_steps=20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted 'bayes' (as bayes-grid: bayes-grid would cost" in printed
    assert "residual=auto chose bayes-grid by the guard's held-out ranking" in printed
    assert "residual effects: off (auto: LDS on the guard's 16 held-out runs" in printed
    assert "options not used: num_steps: bayes ran bayes-grid" in printed
    loaded = bsf.load(out)
    assert loaded.method == "grid" and not loaded.config.residual_effects
    effects = loaded.additive_effects().mean(0)  # [tests, n_train]
    assert np.corrcoef(effects.reshape(-1), b.reshape(-1))[0, 1] > 0.99
