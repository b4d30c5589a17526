"""Our LDS equals dattri's (the field's attribution library) on the same predictions. Here, with
the collect extra, because dattri's metric takes torch tensors."""

import numpy as np
import pytest
import torch
from dattri.metric import lds as dattri_lds

from bayes_simfluence import metrics


def test_our_lds_equals_dattris_on_the_same_predictions():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 5))  # [train, tests]: a linear datamodel
    indices = np.stack([rng.choice(20, 12, replace=False) for _ in range(30)])  # [runs, subset]
    observed_final = scores[indices].sum(1) + rng.normal(scale=2.0, size=(30, 5))  # [runs, tests]
    theirs, _ = dattri_lds(torch.tensor(scores), (torch.tensor(observed_final), torch.tensor(indices)))
    as_trajectory = lambda final: np.stack([np.zeros_like(final), final], axis=1)  # [runs, 2, tests]
    ours, undefined = metrics.spearman_runs(as_trajectory(scores[indices].sum(1)), as_trajectory(observed_final))
    assert undefined == 0
    assert ours == pytest.approx(float(theirs.mean()), abs=1e-6)
