"""``-o variant=auto``: the guard's held-out runs choose ``additive`` or ``linear`` by LDS.

Oracles: the rule itself on held-out predictions whose rankings are constructed (``linear``, the
default, unless ``additive`` ranks better by more than one standard error), and two generating
processes with the structure of real training (a decay every example shares, seed noise per step):
one whose examples pull the loss towards their own level, so that what a run saw last decides its
final loss (only the multiplicative part can express that: ``linear`` by a wide margin), and one
with additive effects only (both variants rank alike: the default stays).
"""

import numpy as np
import pytest

import bayes_simfluence as bsf
from bayes_simfluence.bayes import guard
from bayes_simfluence.bayes.blocks import fit_in_blocks
from bayes_simfluence.bayes.methods import AUTO_VARIANTS, heldout_ranking, variant_check
from bayes_simfluence.methods import FitContext
from bayes_simfluence.runs import Runs
from bayes_simfluence.synthetic import random_curricula
from bayes_simfluence.validation import InputError

GRID = {"memory": "none", "run_state": False, "progress": False}


def generated_runs(kind: str, n_runs: int = 24, n_train: int = 16, n_tests: int = 3, n_steps: int = 30,
                   batch: int = 2, seed: int = 0) -> Runs:
    """Runs of ``L_t = L_{t-1} + sum_{i in c_t} (a_i L_{t-1} + B_i) + noise`` drawn with NumPy.

    ``"reverting"``: ``a_i ~ N(-0.15, 0.03)`` and ``B_i = -a_i e_i`` with levels ``e_i ~ U(0.2, 1.2)``:
    each example moves the loss 15% of the way to its own level, so the last batches decide the final
    loss. ``"additive"``: a shared decay ``a_i = -0.01`` and ``B_i ~ N(0, 0.02)``. Noise sd 0.005 per step.
    """
    rng = np.random.default_rng(seed)
    if kind == "reverting":
        a = rng.normal(-0.15, 0.03, (n_tests, n_train))
        b = -a * rng.uniform(0.2, 1.2, (n_tests, n_train))
    else:
        a = np.full((n_tests, n_train), -0.01)
        b = rng.normal(0.0, 0.02, (n_tests, n_train))
    curricula = random_curricula(n_runs, n_steps, batch, n_train, rng)
    losses = np.empty((n_runs, n_steps + 1, n_tests))
    losses[:, 0] = 1.0
    for t in range(n_steps):
        batch_a, batch_b = a[:, curricula[:, t]].sum(-1).T, b[:, curricula[:, t]].sum(-1).T  # [runs, tests]
        losses[:, t + 1] = losses[:, t] * (1 + batch_a) + batch_b + 0.005 * rng.standard_normal((n_runs, n_tests))
    return Runs.create(curricula, losses, n_train=n_train)


def stacking_with_predictions(runs: Runs, final: np.ndarray) -> guard.Stacking:
    """A guard result whose held-out final-step predictions are ``final [runs, tests]``."""
    residuals = np.zeros((runs.n_runs, runs.n_steps, runs.n_tests))
    residuals[:, -1] = runs.losses[:, -1] - final
    return guard.Stacking(np.ones(runs.n_tests), {}, residuals)


def test_heldout_ranking_is_the_lds_of_the_stacked_predictions():
    runs = generated_runs("additive")
    observed = runs.losses[:, -1]
    exact = stacking_with_predictions(runs, observed)
    reversed_ = stacking_with_predictions(runs, -observed)
    assert heldout_ranking(exact, runs) == pytest.approx(1.0)
    assert heldout_ranking(reversed_, runs) == pytest.approx(-1.0)
    assert heldout_ranking(exact, runs, np.array([0, 1, 2])) == pytest.approx(1.0)


def test_linear_is_kept_unless_additive_ranks_better_by_more_than_one_standard_error():
    """Tied (the same predictions): linear, the default; additive's predictions ranked right and
    linear's unrelated to the runs: additive; the other way round: linear. The gain and its error
    are reported."""
    runs = generated_runs("additive", n_runs=40)
    observed = runs.losses[:, -1]
    noise = np.random.default_rng(1).standard_normal(observed.shape)
    good = stacking_with_predictions(runs, observed + 0.1 * observed.std(0) * noise)
    unrelated = stacking_with_predictions(runs, noise)
    tied = variant_check({"linear": good, "additive": good}, runs)
    assert tied["chosen"] == "linear" and tied["gain_additive"] == 0.0
    better = variant_check({"linear": unrelated, "additive": good}, runs)
    assert better["chosen"] == "additive" and better["gain_additive"] > 3 * better["gain_additive_se"] > 0
    assert better["reason"].startswith("auto: LDS on the guard's 40 held-out runs") and "additive" in better["reason"]
    worse = variant_check({"linear": good, "additive": unrelated}, runs)
    assert worse["chosen"] == "linear" and worse["gain_additive"] < 0


@pytest.mark.parametrize("kind", ["reverting", "additive"])
def test_auto_keeps_linear_where_the_generating_process_gives_additive_no_edge(kind):
    runs = generated_runs(kind)
    fitted = bsf.fit(runs, method="bayes-grid", variant="auto", **GRID)
    check = fitted.info["variant_check"]
    assert check["chosen"] == "linear" and fitted.config.variant == "linear", check
    assert set(check["heldout_lds"]) == set(AUTO_VARIANTS) and check["runs"] == runs.n_runs
    if kind == "reverting":  # the recency only the multiplicative part expresses, by a wide margin
        assert check["gain_additive"] < -0.2, check
    else:  # both rank alike: the gain is within its noise
        assert abs(check["gain_additive"]) < 2 * check["gain_additive_se"], check
    assert "guard" in fitted.info and fitted.stacking_weight.shape == (runs.n_steps, runs.n_tests)


def test_auto_falls_back_to_linear_where_the_guard_cannot_choose_and_says_why():
    runs = generated_runs("additive", n_runs=6)  # fewer than the guard's 4 folds of 2 runs
    fitted = bsf.fit(runs, method="bayes-grid", variant="auto", **GRID)
    assert fitted.config.variant == "linear" and "fewer than the guard needs" in fitted.info["variant_off"]
    unguarded = bsf.fit(generated_runs("additive"), method="bayes-grid", variant="auto", guard=False, **GRID)
    assert unguarded.config.variant == "linear" and "guard=false" in unguarded.info["variant_off"]
    svi = bsf.fit(generated_runs("additive"), method="bayes-svi", variant="auto", guard=False, num_steps=20,
                  num_draws=20, progress=False)
    assert svi.config.variant == "linear" and "needs the guard's cross-fits of bayes-grid" in svi.info["variant_off"]
    named = bsf.fit(generated_runs("additive"), method="bayes-grid", variant="additive", guard=False, **GRID)
    assert "variant_off" not in named.info and "variant_check" not in named.info


@pytest.mark.parametrize("key", ["variant", "residual"])
def test_test_blocks_refuse_auto_with_a_one_line_reason(key):
    with pytest.raises(InputError, match=f"-o {key}=auto: the choice is made once") as error:
        fit_in_blocks("bayes-grid", generated_runs("additive"), FitContext(options={key: "auto"}), blocks=2,
                      progress=False)
    assert "\n" not in str(error.value)


def test_the_cli_fit_says_which_variant_auto_chose_and_the_saved_posterior_keeps_it(tmp_path, capsys):
    from bayes_simfluence.cli import main

    generated_runs("reverting").save(tmp_path / "train.npz")
    out = tmp_path / "posterior.nc"
    assert main(["fit", "--train", str(tmp_path / "train.npz"), "--method", "bayes-grid", "-o", "variant=auto",
                 "-o", "memory=none", "-o", "run_state=false", "--out", str(out)]) == 0
    line = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("variant:"))
    assert line.startswith("variant: linear (auto: LDS on the guard's 24 held-out runs"), line
    loaded = bsf.load(out)
    assert loaded.config.variant == "linear" and loaded.info["variant_check"]["chosen"] == "linear"
