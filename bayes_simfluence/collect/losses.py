"""Per-example losses of a Hugging Face model, batched and padding-aware.

- classification: cross-entropy of the label;
- causal LM: mean negative log-likelihood of the *target* tokens only (the prompt is context).

A training batch's loss is the mean of its per-example losses, so one SGD step on batch
``c_t`` moves the parameters by ``-lr / |c_t| * sum_{i in c_t} grad L(z_i)`` (what TracIn assumes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from bayes_simfluence.collect.data import Examples


@dataclass(frozen=True)
class Encoded:
    """Tokenised examples, unpadded.

    Attributes:
        task: ``"classification"`` or ``"causal-lm"``.
        input_ids: ``[n]`` lists of token ids.
        target_masks: causal LM only: ``[n]`` lists, 1 where the token is a target token.
        labels: classification only: ``[n]`` int64 class ids.
        pad_id: the tokenizer's padding id.
    """

    task: str
    input_ids: list[list[int]]
    target_masks: list[list[int]] | None
    labels: np.ndarray | None
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(examples: Examples, tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> Encoded:
    """Tokenise ``examples``; causal-LM prompts are cut from the left so that targets fit."""
    pad_id = int(tokenizer.pad_token_id)
    if examples.task == "classification":
        ids = tokenizer(examples.texts, truncation=True, max_length=max_length)["input_ids"]
        return Encoded(examples.task, [list(map(int, row)) for row in ids], None, examples.labels, pad_id)
    prompts = tokenizer(examples.texts, add_special_tokens=True)["input_ids"]
    targets = tokenizer(examples.targets, add_special_tokens=False)["input_ids"]
    input_ids, masks = [], []
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        if not target:
            raise ValueError(f"example {examples.ids[row]}: the target has no tokens")
        if not prompt:
            if tokenizer.bos_token_id is None:
                raise ValueError(f"example {examples.ids[row]}: empty prompt and the tokenizer has no BOS token")
            prompt = [tokenizer.bos_token_id]
        target = target[: max_length - 1]
        prompt = prompt[-(max_length - len(target)):]
        input_ids.append([int(t) for t in prompt + target])
        masks.append([0] * len(prompt) + [1] * len(target))
    return Encoded(examples.task, input_ids, masks, None, pad_id)


def collate(encoded: Encoded, indices: np.ndarray | list[int]) -> dict[str, torch.Tensor]:
    """A right-padded batch of the examples at ``indices``.

    Returns:
        ``input_ids`` and ``attention_mask`` ``[batch, length]``; ``labels`` ``[batch]``
        (classification) or ``target_mask`` ``[batch, length]`` (causal LM).
    """
    indices = [int(i) for i in indices]
    length = max(len(encoded.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), length), encoded.pad_id, dtype=torch.long)
    attention = torch.zeros((len(indices), length), dtype=torch.long)
    for row, i in enumerate(indices):
        tokens = encoded.input_ids[i]
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if encoded.task == "classification":
        batch["labels"] = torch.as_tensor(encoded.labels[indices], dtype=torch.long)
    else:
        target_mask = torch.zeros((len(indices), length), dtype=torch.long)
        for row, i in enumerate(indices):
            mask = encoded.target_masks[i]
            target_mask[row, : len(mask)] = torch.tensor(mask)
        batch["target_mask"] = target_mask
    return batch


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Model logits for a collated batch: ``[batch, classes]`` or ``[batch, length, vocab]``."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def losses_from_logits(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[batch]`` per-example losses from ``logits`` (see the module docstring)."""
    if "labels" in batch:
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none")
    predicted = logits[:, :-1].float()
    tokens = batch["input_ids"][:, 1:]
    weights = batch["target_mask"][:, 1:].to(predicted.dtype)
    nll = F.cross_entropy(predicted.transpose(1, 2), tokens, reduction="none")
    return (nll * weights).sum(1) / weights.sum(1)


def example_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[batch]`` per-example losses, differentiable (call under the grad mode you want)."""
    return losses_from_logits(logits_of(model, batch), batch)


class LossEvaluator:
    """Per-example losses of a fixed set of examples, in a batched ``inference_mode`` pass.

    The padded batches are built once; :meth:`__call__` then costs the forward passes only.
    """

    def __init__(self, encoded: Encoded, batch_size: int = 64) -> None:
        order = np.arange(len(encoded))
        self.batches = [collate(encoded, order[start:start + batch_size])
                        for start in range(0, len(encoded), batch_size)]

    def __call__(self, model: torch.nn.Module) -> np.ndarray:
        """``[n]`` float64 losses of the examples under ``model`` (evaluated in eval mode)."""
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            losses = torch.cat([example_losses(model, batch) for batch in self.batches])
        model.train(was_training)
        return losses.double().numpy()
