"""Fitting test examples in blocks, locally or as Ray tasks, merged into one posterior.

Test examples are independent in the model (no pooling across them), so a posterior can be fitted
block by block and the blocks concatenated along ``test_example``: what ``fit --test-blocks K``
does one block after another (memory bounded by one block), and ``fit --ray [ADDRESS]`` does as
Ray tasks on a cluster, each with its own resources and retried if its worker dies. A Ray fit
equals the local blocked fit with the same blocks and seed exactly (every block is fitted by the
same code with the same seed); blocked and joint fits agree within Monte Carlo error (the joint
fit draws its random numbers for all test examples at once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bayes_simfluence.bayes.methods import GRID_METHODS, state_flag
from bayes_simfluence.bayes.posterior import BayesianSimfluence
from bayes_simfluence.methods import FitContext, fit_method
from bayes_simfluence.runs import Runs
from bayes_simfluence.validation import InputError

#: Ray namespace of the fit tasks.
NAMESPACE = "bayes-simfluence"


@dataclass(frozen=True)
class RayFitOptions:
    """Where and how blocks are fitted on Ray.

    Attributes:
        address: ``None`` starts a local instance (unless Ray is initialised in this process);
            otherwise what ``ray.init`` accepts (``"auto"``, ``"ray://host:10001"``).
        cpus_per_block, gpus_per_block: resources of each task (fractions allowed).
        max_retries: retries of a task whose worker died.
    """

    address: str | None = None
    cpus_per_block: float = 1.0
    gpus_per_block: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if not self.cpus_per_block > 0 or self.gpus_per_block < 0 or self.max_retries < 0:
            raise ValueError(f"cpus_per_block must be > 0, gpus_per_block >= 0 and max_retries >= 0; got "
                             f"{self.cpus_per_block}, {self.gpus_per_block}, {self.max_retries}")


def block_indices(n_tests: int, blocks: int) -> list[np.ndarray]:
    """``blocks`` contiguous, nearly equal blocks of test-example indices (no empty block)."""
    if blocks < 1:
        raise ValueError(f"the number of test blocks must be >= 1, got {blocks}")
    return list(np.array_split(np.arange(n_tests), min(blocks, n_tests)))


def fit_block(method: str, train: Runs, context: FitContext) -> BayesianSimfluence:
    """Fit one block (what a Ray task runs); a plain function so that Ray can ship it."""
    return fit_method(method, train, context)


# options whose ``auto`` compares guard cross-fits over all test examples at once: one block cannot choose
CHOSEN_FROM_ALL_TESTS = {"variant": "linear or additive", "residual": "true or false"}


def fit_in_blocks(method: str, train: Runs, context: FitContext, blocks: int,
                  ray: RayFitOptions | None = None, progress: bool = True) -> BayesianSimfluence:
    """Fit a Bayesian ``method`` on ``blocks`` blocks of test examples and merge them.

    Args:
        ray: fit the blocks as Ray tasks (the optional ``ray`` extra); None fits them here, in turn.
    """
    if method.split("-")[0] != "bayes":
        raise ValueError(f"fitting in blocks of test examples is for the Bayesian methods; '{method}' fits all "
                         "test examples at once in seconds")
    state_choice = state_flag(context.options.get("run_state", "auto"))
    residual_default = "residual" not in context.options
    for key, named in CHOSEN_FROM_ALL_TESTS.items():
        if blocks > 1 and str(context.options.get(key, "")).lower() == "auto":
            raise InputError(f"-o {key}=auto: the choice is made once from all test examples' held-out runs; fit "
                             f"without test blocks, or name it ({named})")
    if blocks > 1:
        if state_choice is True:
            raise InputError("-o run_state=true: the run state is shared by all test examples and estimated from "
                             "all of them; fit without test blocks")
        # auto or false: off, since each block would estimate its own state from its own test examples;
        # the residual effects' default (auto) keeps them, as no block can choose for all
        context = dataclasses.replace(context, options={"residual": True, **context.options, "run_state": False})
    parts = [train.select_tests(index) for index in block_indices(train.n_tests, blocks)]
    if ray is None:
        fitted = [fit_block(method, part, context) for part in tqdm(parts, desc="test blocks", disable=not progress)]
    else:
        fitted = _fit_on_ray(method, parts, context, ray)
    merged = concatenate_tests(fitted)
    if blocks > 1 and state_choice == "auto" and merged.method in GRID_METHODS:
        merged.info["run_state_off"] = "test blocks: the state is estimated from all test examples at once"
    if blocks > 1 and residual_default and merged.config.features and merged.method in GRID_METHODS:
        merged.info["residual_off"] = "test blocks: auto chooses from all test examples' held-out runs at once"
    return merged


def _fit_on_ray(method: str, parts: list[Runs], context: FitContext, options: RayFitOptions) -> list[BayesianSimfluence]:
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError("fit --ray needs the 'ray' extra: pip install 'bayes-simfluence[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(fit_block).options(num_cpus=options.cpus_per_block, num_gpus=options.gpus_per_block,
                                             max_retries=options.max_retries)
        return ray.get([task.remote(method, part, context) for part in parts])
    finally:
        if started:
            ray.shutdown()


def concatenate_tests(parts: list[BayesianSimfluence]) -> BayesianSimfluence:
    """One posterior from posteriors of disjoint blocks of test examples (in the given order).

    Per-block NUTS statistics have no test axis to merge along; the merged posterior keeps them in
    ``info["blocks"]`` (divergences summed into ``info["divergences"]``) and its ArviZ
    diagnostics work on the draws.
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    for part in parts[1:]:
        if part.state is not None:
            raise ValueError("posteriors with a run state cannot be joined by test blocks (the state is shared)")
        if (part.method, part.config, part.a.shape[:2], part.batch_size) != \
                (first.method, first.config, first.a.shape[:2], first.batch_size) \
                or not np.array_equal(part.train_ids, first.train_ids) or set(part.hyper) != set(first.hyper):
            raise ValueError("test blocks were fitted differently (method, model, draws or training examples differ)")

    def joined(name: str, axis: int) -> np.ndarray | None:
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else np.concatenate(values, axis=axis)

    blocks: list[dict[str, Any]] = [{**part.info, "tests": len(part.test_ids),
                                     "divergences": int(part.sample_stats["diverging"].sum())
                                     if "diverging" in part.sample_stats else part.info.get("divergences")}
                                    for part in parts]
    info = {**first.info, "seconds": sum(block.get("seconds", 0.0) for block in blocks), "blocks": blocks}
    if any(block.get("divergences") is not None for block in blocks):
        info["divergences"] = sum(block.get("divergences") or 0 for block in blocks)
    info.pop("guard", None)
    return BayesianSimfluence(
        method=first.method, config=first.config, a=joined("a", 2), b=joined("b", 2), drift=joined("drift", 2),
        sigma=joined("sigma", 2), hyper={k: np.concatenate([p.hyper[k] for p in parts], axis=2) for k in first.hyper},
        scale=joined("scale", 0), train_ids=first.train_ids, test_ids=joined("test_ids", 0), sample_stats={},
        info=info, batch_size=first.batch_size, stacking_weight=joined("stacking_weight", -1),
        blind_mean=joined("blind_mean", 1), run_residuals=joined("run_residuals", 2))
