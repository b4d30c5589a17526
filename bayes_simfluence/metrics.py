"""Scores of simulated trajectories against observed held-out runs.

All functions take ``predicted``/``observed`` ``[runs, steps + 1, tests]`` and ignore step 0 (the
given initial loss); probabilistic scores take ``draws [draws, runs, steps + 1, tests]``.

Names follow the field: **LDS**, the linear datamodeling score (Park et al., 2023, TRAK; dattri
and kronfluence report it), is the mean over test examples of Spearman's rho, across models
trained on random subsets of the pool, between predicted and actual outcomes; with the final
loss as outcome it is :func:`spearman_runs` on held-out runs of the random-subset protocol
(it equals ``dattri.metric.lds`` for a simulator whose final loss is additive in the examples, a
test checks it). **Coverage** of central predictive bands, **CRPS** (continuous ranked probability
score). :func:`bootstrap_intervals` puts percentile-bootstrap intervals over test examples on
every metric that is a mean over test examples, so tables show which differences are real;
:func:`spearman_mean_loss` (the run-level ranking of the mean test loss, what ``compare`` decides
on) gets one over runs (:func:`run_bootstrap_interval`), and the LDS of two simulators on the same
runs a paired one of their difference (:func:`lds_difference_interval`).
"""

from __future__ import annotations

import warnings

import numpy as np
import scoringrules
from scipy import stats


def _check_level(level: float) -> None:
    """A central interval's ``level`` is a probability strictly between 0 and 1."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check(predicted: np.ndarray, observed: np.ndarray) -> None:
    if predicted.shape != observed.shape:
        raise ValueError(f"predicted has shape {predicted.shape} but observed has {observed.shape}")


def all_steps_mse(predicted: np.ndarray, observed: np.ndarray, per_test: bool = False) -> float | np.ndarray:
    """Mean squared error over steps ``1..T``, runs and test examples (``[tests]`` if ``per_test``)."""
    _check(predicted, observed)
    squared = (predicted[:, 1:] - observed[:, 1:]) ** 2
    return squared.mean(axis=(0, 1)) if per_test else float(squared.mean())


def final_step_mse(predicted: np.ndarray, observed: np.ndarray, per_test: bool = False) -> float | np.ndarray:
    """Mean squared error at the last step (``[tests]`` if ``per_test``)."""
    _check(predicted, observed)
    squared = (predicted[:, -1] - observed[:, -1]) ** 2
    return squared.mean(axis=0) if per_test else float(squared.mean())


def spearman(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Spearman correlation of final-step losses pooled over all (run, test example) pairs.

    Mostly measures whether the simulator knows which test examples are hard; a
    curriculum-blind predictor already scores high.
    """
    _check(predicted, observed)
    return float(stats.spearmanr(predicted[:, -1].ravel(), observed[:, -1].ravel()).statistic)


def rank_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each column of ``x [n, columns]`` with the same column of ``y``:
    ``[columns]``, NaN where either column is constant (or ``n < 2``: rank correlation undefined)."""
    rho = np.full(x.shape[1], np.nan)
    if x.shape[0] < 2:
        return rho
    defined = (np.ptp(x, axis=0) > 0) & (np.ptp(y, axis=0) > 0)
    centred_x, centred_y = (ranks - ranks.mean(0) for ranks in (stats.rankdata(x, axis=0), stats.rankdata(y, axis=0)))
    denom = np.sqrt((centred_x**2).sum(0) * (centred_y**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, (centred_x * centred_y).sum(0) / denom, np.nan)


def spearman_across_runs(predicted: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, int]:
    """Per test example, Spearman across runs of the final-step loss.

    Returns:
        ``(rho [tests], n_undefined)``: ``rho`` is NaN where the prediction or the observation is
        constant across runs (rank correlation undefined); ``n_undefined`` counts those.
    """
    _check(predicted, observed)
    rho = rank_correlations(predicted[:, -1], observed[:, -1])  # over [runs, tests]
    return rho, int(np.isnan(rho).sum())


def spearman_runs(predicted: np.ndarray, observed: np.ndarray) -> tuple[float, int]:
    """Mean over test examples of :func:`spearman_across_runs` (NaN-safe) and the undefined count."""
    rho, n_undefined = spearman_across_runs(predicted, observed)
    mean = float(np.nanmean(rho)) if np.any(np.isfinite(rho)) else float("nan")
    return mean, n_undefined


def spearman_mean_loss(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Spearman across runs of the final loss averaged over test examples.

    The quantity ``compare`` decides on (which curriculum ends with the lower mean test loss). LDS
    ranks each test example's final loss; a simulator can rank those well and their mean poorly
    where the examples' changes cancel in the mean and what is left is not a sum of per-example
    effects (``experiments/label_imbalance.py``). NaN with fewer than 3 runs or where the predicted
    or observed mean is constant across runs.
    """
    _check(predicted, observed)
    if predicted.shape[0] < 3:
        return float("nan")
    return float(rank_correlations(*_mean_final(predicted, observed))[0])


def run_bootstrap_interval(predicted: np.ndarray, observed: np.ndarray, level: float = 0.9, n_boot: int = 2000,
                           seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap ``level`` interval of :func:`spearman_mean_loss`, resampling runs.

    ``(nan, nan)`` where the score is undefined on the runs given, or on most resamples.
    """
    _check_level(level)
    if not np.isfinite(spearman_mean_loss(predicted, observed)):
        return float("nan"), float("nan")
    mean_pred, mean_obs = _mean_final(predicted, observed)  # [runs, 1] each
    picks = np.random.default_rng(seed).integers(0, len(mean_pred), size=(n_boot, len(mean_pred))).T
    values = rank_correlations(mean_pred[picks, 0], mean_obs[picks, 0])  # one column per resample
    values = values[np.isfinite(values)]
    if len(values) < n_boot / 2:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def lds_difference_interval(predicted: np.ndarray, baseline: np.ndarray, observed: np.ndarray, level: float = 0.9,
                            n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(difference, low, high)``: LDS of ``predicted`` minus LDS of ``baseline`` on the same
    held-out runs, with its percentile-bootstrap ``level`` interval resampling runs, paired (both
    simulators on each resample), so that "below the baseline" is told apart from noise.

    Args:
        predicted, baseline, observed: ``[runs, steps + 1, tests]``.
    """
    _check_level(level)
    _check(predicted, observed)
    _check(baseline, observed)
    difference = spearman_runs(predicted, observed)[0] - spearman_runs(baseline, observed)[0]
    finals = [array[:, -1] for array in (predicted, baseline, observed)]  # [runs, tests] each
    n_runs, n_tests = finals[2].shape
    picks = np.random.default_rng(seed).integers(0, n_runs, size=(n_boot, n_runs))
    values = []
    for chunk in np.array_split(picks, max(1, n_boot * n_tests // 200_000)):  # [chunk, runs] resamples
        columns = [final[chunk.T].reshape(n_runs, -1) for final in finals]  # [runs, chunk * tests]
        lds = [rank_correlations(column, columns[2]).reshape(len(chunk), n_tests) for column in columns[:2]]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample where every rho is undefined
            values.append(np.nanmean(lds[0], axis=1) - np.nanmean(lds[1], axis=1))
    values = np.concatenate(values)
    values = values[np.isfinite(values)]
    if not np.isfinite(difference) or len(values) < n_boot / 2:
        return float(difference), float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(difference), float(low), float(high)


def _mean_final(predicted: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[runs, 1]`` each: the final loss averaged over test examples, predicted and observed."""
    return predicted[:, -1].mean(-1, keepdims=True), observed[:, -1].mean(-1, keepdims=True)


def coverage(draws: np.ndarray, observed: np.ndarray, level: float, per_test: bool = False) -> float | np.ndarray:
    """Fraction of observed losses (steps ``1..T``) inside the central ``level`` band of the draws."""
    _check_level(level)
    _check(draws[0], observed)
    lower, upper = np.quantile(draws[:, :, 1:], [(1 - level) / 2, (1 + level) / 2], axis=0)
    inside = (observed[:, 1:] >= lower) & (observed[:, 1:] <= upper)
    return inside.mean(axis=(0, 1)) if per_test else float(inside.mean())


def crps(draws: np.ndarray, observed: np.ndarray, per_test: bool = False) -> float | np.ndarray:
    """Continuous ranked probability score of the draws (ensemble estimator), steps ``1..T``; lower is better.

    The fair (unbiased) ensemble CRPS, computed with the probability-weighted-moment form: the
    same value as the pairwise form, in memory linear in the number of draws (the pairwise
    form needs ``[points, draws, draws]``: 11 GiB for 200 draws of a 6 x 200 x 32 held-out set).
    """
    _check(draws[0], observed)
    scores = scoringrules.crps_ensemble(observed[:, 1:], draws[:, :, 1:], m_axis=0, estimator="pwm")
    scores = np.asarray(scores)
    return scores.mean(axis=(0, 1)) if per_test else float(scores.mean())


def point_scores(predicted: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """The four point-prediction metrics of the paper's protocol, plus the undefined-rank count."""
    rho_runs, n_undefined = spearman_runs(predicted, observed)
    return {
        "all_steps_mse": all_steps_mse(predicted, observed),
        "final_step_mse": final_step_mse(predicted, observed),
        "spearman": spearman(predicted, observed),
        "spearman_runs": rho_runs,
        "spearman_runs_undefined": n_undefined,
        "spearman_mean_loss": spearman_mean_loss(predicted, observed),
    }


def per_test_scores(predicted: np.ndarray, observed: np.ndarray,
                    draws: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{metric: [tests]}`` for every metric that is a mean over test examples (NaN where undefined)."""
    values = {"all_steps_mse": all_steps_mse(predicted, observed, per_test=True),
              "final_step_mse": final_step_mse(predicted, observed, per_test=True),
              "spearman_runs": spearman_across_runs(predicted, observed)[0]}
    if draws is not None:
        values.update({"coverage_50": coverage(draws, observed, 0.5, per_test=True),
                       "coverage_90": coverage(draws, observed, 0.9, per_test=True),
                       "crps": crps(draws, observed, per_test=True)})
    return values


def bootstrap_intervals(per_test: dict[str, np.ndarray], level: float = 0.9, n_boot: int = 2000,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap ``level`` intervals of the mean over test examples of each metric.

    Test examples are resampled with replacement (the same resamples for every metric); NaN
    entries (undefined Spearman) are left out of each resample's mean. A metric with fewer than
    two defined test examples gets ``(nan, nan)``.
    """
    _check_level(level)
    n_tests = len(next(iter(per_test.values())))
    picks = np.random.default_rng(seed).integers(0, n_tests, size=(n_boot, n_tests))
    intervals = {}
    for name, values in per_test.items():
        values = np.asarray(values, dtype=np.float64)
        if np.isfinite(values).sum() < 2:
            intervals[name] = (float("nan"), float("nan"))
            continue
        resampled = values[picks]
        defined = np.isfinite(resampled)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(defined, resampled, 0.0).sum(1) / defined.sum(1)
        means = means[np.isfinite(means)]
        low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        intervals[name] = (float(low), float(high))
    return intervals


def band_scores(draws: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Calibration of predictive draws: coverage of the 50% and 90% bands, and CRPS."""
    return {
        "coverage_50": coverage(draws, observed, 0.5),
        "coverage_90": coverage(draws, observed, 0.9),
        "crps": crps(draws, observed),
    }
