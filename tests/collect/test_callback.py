"""The Trainer callback and the collector log the same run."""

import numpy as np
import pytest
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from bayes_simfluence.collect import CollectConfig, OptimConfig, collect
from bayes_simfluence.collect.callback import SimfluenceCallback
from bayes_simfluence.collect.data import load_examples
from bayes_simfluence.collect.model import load_model

from collect_fixtures import sentiment_files, tiny_bert


def _trainer_run(tmp_path, model_path, train_path, test_path, accumulation=1):
    model, tokenizer = load_model(model_path, "classification")
    train, test, _ = load_examples(train_path, test_path, id_field="id")
    encoded = tokenizer(train.texts)
    dataset = [{"input_ids": ids, "attention_mask": mask, "labels": int(label), "example_index": i}
               for i, (ids, mask, label) in enumerate(zip(encoded["input_ids"], encoded["attention_mask"],
                                                          train.labels))]
    callback = SimfluenceCallback(tokenizer, test, n_train=len(train), train_ids=train.ids)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=accumulation, num_train_epochs=1, learning_rate=0.1,
                             optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                             remove_unused_columns=False, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, dataloader_num_workers=0, seed=1)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=callback.wrap_collator(DataCollatorWithPadding(tokenizer)), callbacks=[callback])
    trainer.train()
    return callback.runs()


@pytest.mark.parametrize("accumulation", [1, 2])
def test_callback_and_collector_agree(tmp_path, accumulation):
    train_path, test_path = sentiment_files(tmp_path)
    model_path = tiny_bert(tmp_path)
    logged = _trainer_run(tmp_path, model_path, train_path, test_path, accumulation)
    batch = 2 * accumulation
    assert logged.curricula.shape == (1, 12 // batch, batch)
    assert sorted(logged.curricula.reshape(-1).tolist()) == list(range(12))  # one epoch, every example once
    config = CollectConfig(model=model_path, train=train_path, test=test_path, id_field="id", runs=1,
                           batch_size=batch, dropout=False, optim=OptimConfig(optimizer="sgd", lr=0.1))
    collected = collect(config, tmp_path / "runs.npz", curricula=logged.curricula, progress=False)
    np.testing.assert_array_equal(collected.curricula, logged.curricula)
    np.testing.assert_allclose(collected.losses[:, 0], logged.losses[:, 0], rtol=1e-5)
    assert np.abs(logged.losses[0, -1] - logged.losses[0, 0]).max() > 1e-3  # the run did train
    assert list(logged.test_ids) == list(collected.test_ids)
    if accumulation == 1:
        np.testing.assert_allclose(collected.losses, logged.losses, rtol=1e-4, atol=1e-6)
    # With accumulation, transformers 5 sums the micro-batch means of models that ignore
    # num_items_in_batch (BERT classifiers), a step twice the batch-mean step: the logged
    # batches are still exactly the optimiser steps' examples (checked above).


def test_missing_index_column_is_explained(tmp_path):
    train_path, test_path = sentiment_files(tmp_path)
    model, tokenizer = load_model(tiny_bert(tmp_path), "classification")
    _, test, _ = load_examples(train_path, test_path)
    callback = SimfluenceCallback(tokenizer, test, n_train=12)
    collate = callback.wrap_collator(DataCollatorWithPadding(tokenizer))
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        collate([{"input_ids": [101, 102], "attention_mask": [1, 1], "labels": 0}])
    with pytest.raises(ValueError, match="no training step"):
        callback.runs()
