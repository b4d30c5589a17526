"""Fits and roll-outs split over devices along test_example equal the unsplit ones (4 CPU devices)."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json
import jax
import numpy as np
from bayes_simfluence.bayes import sharding
from bayes_simfluence.bayes.synthetic import model_runs
from bayes_simfluence.methods import FitContext, fit_method

runs = model_runs(n_train=12, n_tests=8, n_runs=6, n_steps=15, effect_scale=0.02, seed=2)[0]
options = {"num_steps": 100, "num_draws": 60, "progress": False, "guard": False}  # equality is the check
fits, results = {}, {}
for shard in (False, True):  # the same fit with and without splitting test examples over devices
    sharding.SHARD_TESTS = shard
    fits[shard] = fit_method("bayes-svi", runs, FitContext(options={**options, "precision": "float64"}))
mesh = sharding.device_mesh(8)
fitted, curricula, initial = fits[False], runs.curricula[:3], runs.initial_losses[:3]
for shard in (True, False):  # one posterior's roll-outs, split and not
    sharding.SHARD_TESTS = shard
    results[shard] = (fitted.simulate_draws(curricula, initial, 40, seed=1),
                      fitted.simulate(curricula, initial),
                      fitted.select_tests(np.array([1, 2, 3])).simulate_draws(curricula, initial[:, 1:4], 40, seed=1,
                                                                                predictive="parameters"))
print(json.dumps({
    "devices": jax.local_device_count(), "mesh": None if mesh is None else list(mesh.shape.values()),
    "draws": float(np.abs(results[True][0] - results[False][0]).max()),
    "mean": float(np.abs(results[True][1] - results[False][1]).max()),
    "three_tests": float(np.abs(results[True][2] - results[False][2]).max()),
    "spread": float(results[False][0].std()),
    "fit": max(float(np.abs(getattr(fits[True], name) - getattr(fits[False], name)).max()) for name in ("a", "b", "sigma")),
    "fit_scale": float(np.abs(fits[False].b).max()),
}))
"""


@pytest.mark.slow
def test_sharded_fits_and_roll_outs_equal_unsharded_ones_on_four_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["mesh"] == [4]  # 8 test examples split 4 ways
    assert out["spread"] > 0.01  # the draws are not trivially equal
    assert out["draws"] <= 1e-12 and out["mean"] <= 1e-12  # noise included: the same random numbers
    assert out["three_tests"] <= 1e-12  # 3 test examples do not divide over 4 devices: not split, same numbers
    assert out["fit"] <= 1e-9 * out["fit_scale"]  # the SVI fit: only the order of sums over test examples differs
