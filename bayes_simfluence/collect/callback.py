"""Log one run in the runs format from a ``transformers.Trainer`` you already use.

The callback needs to know which training examples each step used. Give the training set an
integer column with each example's index in the pool, keep it through the Trainer
(``remove_unused_columns=False``, so the dataset should hold only model inputs plus that
column) and wrap the data collator: the wrapper moves the column into the batch, and a forward
pre-hook takes it out again before the model sees it, recording the indices of exactly the
batches the model is trained on (prefetching and gradient accumulation are handled: one runs
step = one optimiser step, with all its micro-batches)::

    train = train.add_column("example_index", list(range(len(train))))
    callback = SimfluenceCallback(tokenizer, test_examples, n_train=len(train))
    trainer = Trainer(model, TrainingArguments(..., remove_unused_columns=False),
                      train_dataset=train, data_collator=callback.wrap_collator(collator),
                      callbacks=[callback])
    trainer.train()
    callback.runs().save("run.npz")

Test losses are logged before training and after every optimiser step with the same
per-example losses as the collector (:mod:`bayes_simfluence.collect.losses`). The callback
records what the Trainer did; it does not change how the Trainer scales its loss (with gradient
accumulation, transformers 5 sums the micro-batch means of models that ignore
``num_items_in_batch``, e.g. BERT classifiers, where the collector takes one batch mean).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback

from bayes_simfluence.curricula import from_batches
from bayes_simfluence.collect.data import Examples
from bayes_simfluence.collect.losses import LossEvaluator, encode
from bayes_simfluence.runs import Runs

INDEX_COLUMN = "example_index"


class SimfluenceCallback(TrainerCallback):
    """Records ``curricula [1, steps, batch]`` and ``losses [1, steps + 1, tests]`` of one Trainer run.

    Args:
        tokenizer: the model's tokenizer (to encode the test examples).
        test: test examples (see :func:`bayes_simfluence.collect.data.load_examples`).
        n_train: pool size that ``example_index`` refers to.
        train_ids: ``[n_train]`` names of the training examples (default ``train_<i>``).
        index_column: name of the index column.
        max_length, eval_batch_size: as for the collector.
        meta: extra metadata stored with the run.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, test: Examples, n_train: int,
                 train_ids: list[str] | None = None, index_column: str = INDEX_COLUMN, max_length: int = 128,
                 eval_batch_size: int = 64, meta: dict | None = None) -> None:
        self.evaluate = LossEvaluator(encode(test, tokenizer, max_length), eval_batch_size)
        self.test_ids = test.ids
        self.n_train = n_train
        self.train_ids = train_ids
        self.index_column = index_column
        self.meta = dict(meta or {})
        self.batches: list[list[int]] = []
        self.losses: list[np.ndarray] = []
        self._pending: list[int] = []
        self._hook = None

    def wrap_collator(self, collator: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
        """A collator that carries ``index_column`` through ``collator`` as a tensor in the batch."""

        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            if any(self.index_column not in feature for feature in features):
                raise ValueError(
                    f"training features have no {self.index_column!r} column: add it with "
                    f"dataset.add_column({self.index_column!r}, list(range(len(dataset)))) and set "
                    "TrainingArguments(remove_unused_columns=False)")
            indices = [int(feature[self.index_column]) for feature in features]
            stripped = [{k: v for k, v in feature.items() if k != self.index_column} for feature in features]
            batch = dict(collator(stripped))
            batch[self.index_column] = torch.tensor(indices, dtype=torch.long)
            return batch

        return collate

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.index_column in kwargs:
            kwargs = dict(kwargs)
            indices = kwargs.pop(self.index_column)
            if module.training:
                self._pending.extend(int(i) for i in indices.reshape(-1).tolist())
        return args, kwargs

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.batches, self._pending = [], []
        self.losses = [self.evaluate(model)]
        self._hook = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.batches.append(self._pending)
        self._pending = []
        self.losses.append(self.evaluate(model))

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def runs(self) -> Runs:
        """The logged run: ``curricula [1, steps, batch]``, ``losses [1, steps + 1, tests]``."""
        if not self.batches:
            raise ValueError("no training step was logged; was the callback passed to the Trainer?")
        curriculum = from_batches(self.batches, self.n_train)
        return Runs.create(curriculum[None], np.stack(self.losses)[None], n_train=self.n_train,
                           train_ids=self.train_ids, test_ids=self.test_ids,
                           meta={"collector": "SimfluenceCallback", **self.meta})
