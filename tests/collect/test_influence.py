"""Influence functions: the Woodbury/Gram computation equals an explicit damped Hessian solve."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, hessian

from bayes_simfluence.collect.data import load_examples
from bayes_simfluence.collect.gradients import loss_gradients
from bayes_simfluence.collect.influence import influence_scores, train_gradients_and_curvature
from bayes_simfluence.collect.losses import collate, encode, example_losses
from bayes_simfluence.collect.model import load_model

from collect_fixtures import sentiment_files, tiny_bert


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    directory = tmp_path_factory.mktemp("influence")
    train_path, test_path = sentiment_files(directory)
    model, tokenizer = load_model(tiny_bert(directory, seed=3), "classification")
    model.eval()
    train, test, _ = load_examples(train_path, test_path)
    return model, encode(train, tokenizer), encode(test, tokenizer)


def test_matches_explicit_damped_hessian_on_the_classifier(problem):
    """On the classifier weights the logits are linear, so the Gauss-Newton/Fisher is the exact Hessian."""
    model, train, test = problem
    names = ["classifier.weight", "classifier.bias"]
    damping = 0.3
    train_gradients, curvature = train_gradients_and_curvature(model, train, names)
    test_gradients = loss_gradients(model, test, names)
    scores = influence_scores(test_gradients, train_gradients, curvature, damping)

    shapes = [dict(model.named_parameters())[name].shape for name in names]
    sizes = [int(np.prod(shape)) for shape in shapes]
    batch = collate(train, np.arange(len(train)))

    def mean_loss(flat):
        pieces = torch.split(flat, sizes)
        params = {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}
        logits = functional_call(model, params, (), {"input_ids": batch["input_ids"],
                                                     "attention_mask": batch["attention_mask"]}, strict=False).logits
        return torch.nn.functional.cross_entropy(logits, batch["labels"])

    flat = torch.cat([dict(model.named_parameters())[name].detach().reshape(-1) for name in names]).double()
    model.double()
    H = hessian(mean_loss)(flat)
    model.float()
    P = damping * torch.linalg.inv(H + damping * torch.eye(H.shape[0], dtype=torch.float64))
    explicit = (test_gradients.double() @ P.detach() @ train_gradients.double().T).numpy()
    np.testing.assert_allclose(scores, explicit, rtol=1e-4, atol=1e-6 * np.abs(explicit).max())
    # the gradients used are the per-example loss gradients
    with torch.no_grad():
        assert torch.isfinite(example_losses(model, batch)).all()


def test_large_damping_is_tracin_and_small_damping_shrinks_curved_directions(problem):
    model, train, test = problem
    names = ["classifier.weight", "classifier.bias", "bert.pooler.dense.weight"]
    train_gradients, curvature = train_gradients_and_curvature(model, train, names)
    test_gradients = loss_gradients(model, test, names)
    plain = (test_gradients @ train_gradients.T).numpy()  # TracIn
    np.testing.assert_allclose(influence_scores(test_gradients, train_gradients, curvature, 1e8), plain, rtol=1e-4,
                               atol=1e-6 * np.abs(plain).max())
    self_scores = [np.diag(influence_scores(train_gradients, train_gradients, curvature, d)) for d in (10.0, 0.01)]
    assert np.all(self_scores[1] <= self_scores[0] + 1e-9)  # P = lambda (H + lambda)^-1 shrinks as lambda falls
    with pytest.raises(ValueError, match="damping must be positive"):
        influence_scores(test_gradients, train_gradients, curvature, 0.0)
