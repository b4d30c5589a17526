"""Pair scores from dattri's attributors (TracIn, influence functions with CG, TRAK) at the current weights.

dattri (Deng et al., 2024, ``pip install dattri``) vmaps ``torch.func.grad`` over examples. A
Hugging Face model cannot be vmapped as called in training: its forward builds the attention
mask with data-dependent branches. Here every example is padded to a common length and given the
*already expanded* additive mask (``0`` where attended, the dtype's minimum elsewhere; causal
for causal LMs), which the models take as is, so the same per-example loss as
:func:`~bayes_simfluence.collect.losses.example_losses` becomes vmappable. Scores use the
gradients of the parameters ``names`` only, in eval mode (no dropout), at the model's current
weights (one checkpoint, so the collector calls this at each of its checkpoints).

All three follow the convention of :mod:`bayes_simfluence.scores`: ``S[m, i] > 0`` means that
training on ``i`` lowers test example ``m``'s loss.

- ``tracin``: dattri's ``TracInAttributor`` with weight 1 and **no random projection**: the exact
  dot product ``<grad L(z_test), grad L(z_i)>``, the pair score of TracInCP;
- ``influence-cg``: dattri's ``IFAttributorCG``: ``lambda g_test^T (H + lambda I)^{-1} g_i`` with
  ``H`` the exact Hessian of the mean training loss (conjugate gradients on Hessian-vector
  products; ``lambda`` the damping, the same as ``influence``'s, which uses the Gauss-Newton
  matrix instead and solves exactly);
- ``trak``: dattri's ``TRAKAttributor`` (one checkpoint, 512-dimensional random projection, seed
  0, the correct-class probability as the model output; for causal LMs ``exp(-loss)``), with a
  kernel ridge of 1% of the kernel's mean nonzero eigenvalue (:func:`_trak_regularization`):
  a pool smaller than the projection leaves TRAK's kernel singular. As the ridge grows, TRAK
  tends to TracIn's dot products weighted by ``1 - p_i`` (a test checks it).
"""

from __future__ import annotations

import io
from contextlib import contextmanager, redirect_stderr
from typing import Iterator

import numpy as np
import torch
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from bayes_simfluence.collect.gradients import gradient_mode
from bayes_simfluence.collect.losses import Encoded, collate, losses_from_logits

DATTRI_METHODS: tuple[str, ...] = ("tracin", "influence-cg", "trak")
TRAK_PROJECTION = {"proj_dim": 512, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"}
CG_ITERATIONS = 20
TRAK_RELATIVE_RIDGE = 1e-2
CG_TEST_BATCH = 2  # test examples solved at once: each holds its own Hessian-vector product graph
GRADIENT_BATCH = 32  # examples per batch of per-example gradients (memory: GRADIENT_BATCH x parameters)


def padded_tensors(encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [n, length], attention [n, length], target)`` of every example, right-padded.

    ``target`` is ``labels [n]`` for classification and ``target_mask [n, length]`` for causal LMs.
    """
    batch = collate(encoded, np.arange(len(encoded)))
    target = batch["labels"] if encoded.task == "classification" else batch["target_mask"]
    return batch["input_ids"], batch["attention_mask"], target


def _additive_mask(attention: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, 1, 1 or length, length]`` additive mask from ``attention [batch, length]``."""
    allowed = attention[:, None, None, :].bool()
    if causal:
        length = attention.shape[-1]
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


class ExampleLoss:
    """``loss(params, data)``: mean per-example loss of one example or a batch, in ``torch.func`` style.

    ``data = (input_ids, attention, target)`` from :func:`padded_tensors`, either one example
    (no leading axis: what dattri's vmap passes) or a batch.
    """

    def __init__(self, model: torch.nn.Module, task: str) -> None:
        self.model = model
        self.task = task

    def losses(self, params: dict[str, torch.Tensor], data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        input_ids, attention, target = data
        if input_ids.dim() == 1:
            input_ids, attention = input_ids[None], attention[None]
            target = target[None]
        dtype = next(iter(params.values())).dtype
        mask = _additive_mask(attention, self.task == "causal-lm", dtype)
        logits = functional_call(self.model, params, (), {"input_ids": input_ids, "attention_mask": mask},
                                 strict=False).logits
        batch = {"input_ids": input_ids}
        batch["labels" if self.task == "classification" else "target_mask"] = target
        return losses_from_logits(logits, batch)

    def __call__(self, params: dict[str, torch.Tensor], data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.losses(params, data).mean()

    def correct_probability(self, params: dict[str, torch.Tensor], data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``exp(-loss)``: the probability of the label (classification) or of the target tokens' mean NLL."""
        return torch.exp(-self(params, data))


def _loader(tensors: tuple[torch.Tensor, ...], batch_size: int | None = None) -> DataLoader:
    dataset = TensorDataset(*tensors)
    return DataLoader(dataset, batch_size=batch_size or len(dataset), shuffle=False)


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Eager attention while scoring (PyTorch's fused CPU attention has no second derivative, which
    Hessian-vector products need); the model's own implementation is restored on exit."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


def _keep_model(model: torch.nn.Module, checkpoint: object) -> torch.nn.Module:
    """dattri checkpoint loader: the weights are already the model's current ones (and its mode is ours)."""
    return model


def _influence_cg(task, train_tensors: tuple[torch.Tensor, ...], test_tensors: tuple[torch.Tensor, ...],
                  damping: float) -> torch.Tensor:
    """``[n_train, tests]`` ``g_i^T (H + damping I)^{-1} g_test`` by dattri's CG.

    The Hessian is that of the mean loss over the whole pool in one batch (dattri adds up the
    inverse-Hessian-vector products of separate batches, which is not the inverse of their sum);
    the training gradients it is applied to are taken in batches like every other score's.
    dattri's CG runs a fixed number of iterations without a stopping rule, and once a solve has
    converged exactly (CG needs at most as many iterations as ``H`` has distinct eigenvalues,
    few on a small pool) the next step divides zero by zero. Test examples whose solve broke
    down are solved again with half the iterations, down to one (a converged solve is reached
    before the breakdown, so fewer iterations lose nothing).
    """
    from dattri.algorithm.influence_function import IFAttributorCG

    result = torch.full((len(train_tensors[0]), len(test_tensors[0])), float("nan"))
    iterations = CG_ITERATIONS
    while True:
        todo = torch.nonzero(torch.isnan(result).any(dim=0)).flatten()
        if todo.numel() == 0:
            return result
        if iterations == 0:
            raise ValueError(f"influence-cg: dattri's conjugate gradients gave NaN for {todo.numel()} test "
                             f"example(s) even with one iteration (damping {damping}); try a larger --damping")
        attributor = IFAttributorCG(task, max_iter=iterations, regularization=damping)
        attributor.cache(_loader(train_tensors))
        subset = tuple(tensor[todo] for tensor in test_tensors)
        result[:, todo] = attributor.attribute(_loader(train_tensors, GRADIENT_BATCH),
                                               _loader(subset, CG_TEST_BATCH)).detach()
        iterations //= 2


def _trak_regularization(task, train_tensors: tuple[torch.Tensor, ...]) -> float:
    """TRAK's kernel ridge: :data:`TRAK_RELATIVE_RIDGE` times the kernel's mean nonzero eigenvalue.

    TRAK solves with the ``proj_dim x proj_dim`` kernel ``Phi^T Phi`` of projected training
    gradients (each divided by ``sqrt(d)`` and projected norm-preservingly), whose rank is at most
    the pool size: a pool smaller than the projection makes the unregularised solve ill-posed
    (dattri's default regularisation is 0). The trace is ``sum_i |g_i|^2 / d``, known without
    projecting, and spread over at most ``min(n_train, proj_dim)`` nonzero eigenvalues.
    """
    parameters, _ = task.get_param(ckpt_idx=0)
    gradient_of = task.get_grad_loss_func(in_dims=(None, 0))
    squared_norms = 0.0
    for batch in _loader(train_tensors, GRADIENT_BATCH):
        squared_norms += float(torch.sum(gradient_of(parameters, tuple(batch)).double() ** 2))
    n_train = len(train_tensors[0])
    return TRAK_RELATIVE_RIDGE * squared_norms / parameters.numel() / min(n_train, TRAK_PROJECTION["proj_dim"])


def dattri_scores(model: torch.nn.Module, train: Encoded, test: Encoded, names: list[str],
                  methods: tuple[str, ...], damping: float) -> dict[str, np.ndarray]:
    """``{method: [tests, n_train]}`` float32 scores (see the module docstring) at the current weights.

    Args:
        model: the collector's model; its mode and ``requires_grad`` flags are restored on exit.
        train, test: the encoded pool and test examples.
        names: parameters whose gradients the scores use.
        methods: a subset of :data:`DATTRI_METHODS`.
        damping: ``lambda > 0`` of ``influence-cg``.
    """
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    unknown = sorted(set(methods) - set(DATTRI_METHODS))
    if unknown:
        raise ValueError(f"unknown dattri methods {unknown}; known: {list(DATTRI_METHODS)}")
    if "influence-cg" in methods and not damping > 0:
        raise ValueError(f"damping must be positive, got {damping}")
    if not methods:
        return {}
    loss = ExampleLoss(model, train.task)
    train_tensors, test_tensors = padded_tensors(train), padded_tensors(test)
    scores = {}
    with gradient_mode(model, names), eager_attention(model), redirect_stderr(io.StringIO()):  # dattri's tqdm bars
        task = AttributionTask(loss_func=loss, model=model, checkpoints={}, checkpoints_load_func=_keep_model)
        for method in methods:
            if method == "tracin":
                attributor = TracInAttributor(task, weight_list=torch.ones(1), normalized_grad=False)
                attributor.projector_kwargs = None  # the constructor always installs a projection: exact dots
                result = attributor.attribute(_loader(train_tensors, GRADIENT_BATCH),
                                              _loader(test_tensors, GRADIENT_BATCH))
            elif method == "influence-cg":
                result = damping * _influence_cg(task, train_tensors, test_tensors, damping)
            else:
                attributor = TRAKAttributor(task, correct_probability_func=loss.correct_probability,
                                            projector_kwargs=dict(TRAK_PROJECTION),
                                            regularization=_trak_regularization(task, train_tensors))
                attributor.cache(_loader(train_tensors, GRADIENT_BATCH))
                result = attributor.attribute(test_dataloader=_loader(test_tensors, GRADIENT_BATCH))
            scores[method] = result.detach().T.numpy().astype(np.float32)
    return scores
