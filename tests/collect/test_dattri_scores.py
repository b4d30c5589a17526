"""dattri's attributors on the collector's models, checked against independent computations."""

import numpy as np
import pytest

from bayes_simfluence.collect.data import load_examples
from bayes_simfluence.collect.dattri_scores import DATTRI_METHODS, dattri_scores
from bayes_simfluence.collect.gradients import loss_gradients
from bayes_simfluence.collect.influence import influence_scores, train_gradients_and_curvature
from bayes_simfluence.collect.losses import encode
from bayes_simfluence.collect.model import load_model, select_parameters

from collect_fixtures import lm_files, sentiment_files, tiny_bert, tiny_gpt2


def _problem(directory, task):
    if task == "classification":
        train_path, test_path = sentiment_files(directory)
        model, tokenizer = load_model(tiny_bert(directory, seed=3), task)
        train, test, _ = load_examples(train_path, test_path)
    else:
        train_path, test_path = lm_files(directory)
        model, tokenizer = load_model(tiny_gpt2(directory), task)
        train, test, _ = load_examples(train_path, test_path, task, prompt_field="prompt", target_field="target")
    return model, encode(train, tokenizer), encode(test, tokenizer)


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_tracin_is_the_exact_gradient_dot_product_and_the_model_is_left_as_found(tmp_path, task):
    """Padded, vmapped dattri gradients equal the per-example unpadded loop of :mod:`.gradients`."""
    model, train, test = _problem(tmp_path, task)
    names = select_parameters(model, "last:1")
    model.train()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    attention = model.config._attn_implementation
    scores = dattri_scores(model, train, test, names, DATTRI_METHODS, damping=0.5)
    expected = (loss_gradients(model, test, names) @ loss_gradients(model, train, names).T).numpy()
    np.testing.assert_allclose(scores["tracin"], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert model.training and model.config._attn_implementation == attention
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    for method in DATTRI_METHODS:
        assert scores[method].shape == (len(test), len(train)) and np.all(np.isfinite(scores[method])), method
    # TRAK's random projection is seeded: the same scores again
    np.testing.assert_array_equal(dattri_scores(model, train, test, names, ("trak",), 0.5)["trak"], scores["trak"])


def test_influence_cg_equals_the_exact_damped_solve_where_gauss_newton_is_the_hessian(tmp_path):
    """On the classifier weights the logits are linear, so the Hessian is the Gauss-Newton matrix and
    dattri's CG must reproduce this package's exact Woodbury solve (itself checked against an
    explicit inverse in test_influence.py)."""
    model, train, test = _problem(tmp_path, "classification")
    names = ["classifier.weight", "classifier.bias"]
    for damping in (0.3, 1e4):  # 1e4: the solve converges at once (dattri's CG then breaks down: retried)
        train_gradients, curvature = train_gradients_and_curvature(model, train, names)
        expected = influence_scores(loss_gradients(model, test, names), train_gradients, curvature, damping)
        scores = dattri_scores(model, train, test, names, ("influence-cg",), damping)["influence-cg"]
        np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())


def test_unknown_methods_and_bad_damping_are_refused(tmp_path):
    model, train, test = _problem(tmp_path, "classification")
    with pytest.raises(ValueError, match="unknown dattri methods"):
        dattri_scores(model, train, test, ["classifier.bias"], ("trak", "datamodels"), 0.1)
    with pytest.raises(ValueError, match="damping must be positive"):
        dattri_scores(model, train, test, ["classifier.bias"], ("influence-cg",), 0.0)


def test_trak_with_a_large_ridge_is_tracin_weighted_by_the_error_probability(tmp_path, monkeypatch):
    """TRAK scores ``phi_test^T (Phi^T Phi + lambda I)^{-1} Phi^T diag(1 - p)``: for large ``lambda`` this is
    ``(1 - p_i) <g_test, g_i> / lambda`` up to the norm-preserving projection, a positive multiple of
    TracIn per training example; the sign convention (positive = helpful) must be TracIn's."""
    import bayes_simfluence.collect.dattri_scores as dattri_module
    from bayes_simfluence.collect.losses import collate, example_losses
    import torch

    model, train, test = _problem(tmp_path, "classification")
    names = select_parameters(model, "last:1")
    torch.manual_seed(0)  # a head far from the random init's p = 1/2 everywhere, so that 1 - p varies
    with torch.no_grad():
        model.classifier.weight.normal_(0, 3.0)
        model.bert.pooler.dense.weight.normal_(0, 1.0)
    monkeypatch.setattr(dattri_module, "TRAK_RELATIVE_RIDGE", 1e8)
    scores = dattri_scores(model, train, test, names, ("tracin", "trak"), damping=1.0)
    model.eval()
    with torch.no_grad():
        error_probability = 1 - torch.exp(-example_losses(model, collate(train, np.arange(len(train))))).numpy()
    expected = scores["tracin"] * error_probability[None, :]
    slope = np.sum(scores["trak"] * expected) / np.sum(expected ** 2)
    assert slope > 0
    # (unweighted TracIn correlates 0.998 here, and the default ridge 1e-2 gives 0.96)
    assert np.corrcoef(scores["trak"].ravel(), expected.ravel())[0, 1] > 0.9999
