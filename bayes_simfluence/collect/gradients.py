"""Per-example gradients on a subset of parameters, flattened to vectors.

Gradients are taken in eval mode (no dropout) at the model's current weights, one example at a
time without padding. (``torch.func.vmap`` would batch this, but Hugging Face models branch on
their attention masks, which ``vmap`` cannot trace; the loop is exact and its cost is one
forward and backward pass per example.)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from bayes_simfluence.collect.losses import Encoded, collate, example_losses, logits_of


@contextmanager
def gradient_mode(model: torch.nn.Module, names: list[str]) -> Iterator[list[torch.nn.Parameter]]:
    """Eval mode with ``requires_grad`` on exactly ``names``; both restored on exit."""
    parameters = dict(model.named_parameters())
    missing = [name for name in names if name not in parameters]
    if missing:
        raise ValueError(f"unknown parameter names {missing[:3]}")
    saved = {name: p.requires_grad for name, p in parameters.items()}
    was_training = model.training
    wanted = set(names)
    for name, parameter in parameters.items():
        parameter.requires_grad_(name in wanted)
    model.eval()
    try:
        yield [parameters[name] for name in names]
    finally:
        for name, parameter in parameters.items():
            parameter.requires_grad_(saved[name])
        model.train(was_training)


def _flatten(gradients: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gradients]).float()


def parameter_count(model: torch.nn.Module, names: list[str]) -> int:
    """Length ``d`` of the flattened gradient over ``names``."""
    parameters = dict(model.named_parameters())
    return sum(parameters[name].numel() for name in names)


def loss_gradients(model: torch.nn.Module, encoded: Encoded, names: list[str]) -> torch.Tensor:
    """``[n, d]`` gradient of each example's loss with respect to the parameters ``names``."""
    rows = torch.empty((len(encoded), parameter_count(model, names)), dtype=torch.float32)
    with gradient_mode(model, names) as parameters:
        for i in range(len(encoded)):
            loss = example_losses(model, collate(encoded, [i]))[0]
            rows[i] = _flatten(torch.autograd.grad(loss, parameters))
    return rows


def log_prob_gradients(model: torch.nn.Module, encoded: Encoded, names: list[str]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification only: gradients of every class's log-probability.

    Returns:
        ``(gradients [n, classes, d], probabilities [n, classes])``. The loss gradient of
        example ``i`` is ``-gradients[i, label_i]``; the Fisher (= Gauss-Newton for
        cross-entropy) of example ``i`` is ``sum_k p_ik g_ik g_ik^T``.
    """
    if encoded.task != "classification":
        raise ValueError("log_prob_gradients needs a classification task")
    rows = None
    probabilities = []
    with gradient_mode(model, names) as parameters:
        for i in range(len(encoded)):
            log_probs = torch.log_softmax(logits_of(model, collate(encoded, [i]))[0].float(), dim=-1)
            n_classes = log_probs.shape[0]
            if rows is None:
                rows = torch.empty((len(encoded), n_classes, parameter_count(model, names)))
            for k in range(n_classes):
                rows[i, k] = _flatten(torch.autograd.grad(log_probs[k], parameters, retain_graph=True))
            probabilities.append(log_probs.detach().exp())
    return rows, torch.stack(probabilities)
