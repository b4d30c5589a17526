"""Tiny models and data for the collect tests (a helper module, not a test file).

Models are built from ``transformers`` configs (a few thousand parameters) with the tokenizer
shipped by the embedded MiniLM package, so everything runs offline in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from bayes_simfluence.collect.embedded import embedded_model_path

POSITIVE = ["a lovely film", "great acting and a warm story", "I enjoyed every minute", "superb and moving",
            "the best meal in town", "works perfectly, very happy", "charming and funny", "a delight"]
NEGATIVE = ["a dull film", "terrible acting and a cold story", "I hated every minute", "boring and flat",
            "the worst meal in town", "broke after a day, very sad", "tedious and silly", "a mess"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sentiment_files(directory: Path, n_train: int = 12, n_test: int = 4) -> tuple[Path, Path]:
    """``train.jsonl`` and ``test.jsonl`` with ``text``/``label`` rows, alternating labels."""
    rows = [{"id": f"ex{i}", "text": (POSITIVE if i % 2 == 0 else NEGATIVE)[(i // 2) % 8], "label": 1 - i % 2}
            for i in range(n_train + n_test)]
    return (write_jsonl(directory / "train.jsonl", rows[:n_train]),
            write_jsonl(directory / "test.jsonl", rows[n_train:]))


def lm_files(directory: Path, n_train: int = 8, n_test: int = 3) -> tuple[Path, Path]:
    """``prompt``/``target`` rows of varying lengths for the causal-LM path."""
    rows = [{"prompt": f"review {i}: {POSITIVE[i % 8]}", "target": " good" if i % 2 else " really not good at all"}
            for i in range(n_train + n_test)]
    return (write_jsonl(directory / "lm_train.jsonl", rows[:n_train]),
            write_jsonl(directory / "lm_test.jsonl", rows[n_train:]))


def _tokenizer():
    return AutoTokenizer.from_pretrained(str(embedded_model_path()), local_files_only=True)


def tiny_bert(directory: Path, seed: int = 0, dropout: float = 0.0) -> Path:
    """A 2-layer BERT classifier (hidden 16) saved with the MiniLM tokenizer; returns its directory."""
    tokenizer = _tokenizer()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, num_labels=2)
    torch.manual_seed(seed)
    path = directory / "tiny-bert"
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_gpt2(directory: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (hidden 16) saved with the MiniLM tokenizer; returns its directory."""
    tokenizer = _tokenizer()
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(seed)
    path = directory / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
