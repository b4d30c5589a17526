"""Loading a Hugging Face model offline and choosing which of its parameters train.

Parameter subsets are named with a small spec, used both for what the collector trains and for
which gradients TracIn and influence functions use:

- ``"all"``: every parameter;
- ``"head"``: the parameters registered after the stack of transformer blocks (for BERT the
  pooler and classifier, for GPT-2 the final layer norm);
- ``"last:N"``: the last ``N`` transformer blocks plus the head;
- otherwise a comma-separated list of parameter-name prefixes, e.g. ``"classifier,bert.pooler"``.

The block stack is the ``torch.nn.ModuleList`` holding the most parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedModel, PreTrainedTokenizerBase)
from transformers.utils import logging as hf_logging


def load_model(name_or_path: str | Path, task: str, num_labels: int = 2, init_seed: int = 0,
               dropout: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer from a local path or the local cache (never the network).

    A classification head that the checkpoint lacks is initialised from ``torch.manual_seed(init_seed)``,
    so every process that loads the same checkpoint with the same seed gets identical weights.
    ``dropout=False`` sets the probability of every ``Dropout`` module to 0.
    """
    verbosity = hf_logging.get_verbosity()
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True)
        torch.manual_seed(init_seed)
        if task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                str(name_or_path), num_labels=num_labels, local_files_only=True)
        elif task == "causal-lm":
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), local_files_only=True)
        else:
            raise ValueError(f"unknown task {task!r}")
    except OSError as error:
        raise ValueError(
            f"could not load model {str(name_or_path)!r} offline: give a local directory with config, "
            f"weights and tokenizer, or the name of a model already in the local Hugging Face cache ({error})"
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if not dropout:
        disable_dropout(model)
    return model, tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Set ``p = 0`` on every ``torch.nn.Dropout`` in ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _block_stack(model: torch.nn.Module) -> tuple[str, int] | None:
    """``(name, n_blocks)`` of the ModuleList with the most parameters, or None."""
    best = None
    best_size = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, len(module)), size
    return best


def select_parameters(model: torch.nn.Module, spec: str) -> list[str]:
    """Names of the parameters picked by ``spec`` (see the module docstring), in model order."""
    names = [name for name, _ in model.named_parameters()]
    spec = spec.strip()
    if spec == "all":
        return names
    if spec == "head" or spec.startswith("last:"):
        n_last = 0 if spec == "head" else _parse_count(spec)
        stack = _block_stack(model)
        if stack is None:
            raise ValueError(f"parameter spec {spec!r}: the model has no stack of blocks (ModuleList)")
        stack_name, n_blocks = stack
        if n_last > n_blocks:
            raise ValueError(f"parameter spec {spec!r}: the model has only {n_blocks} blocks")
        block_prefixes = [f"{stack_name}.{i}." for i in range(n_blocks)]
        in_stack = [any(name.startswith(p) for p in block_prefixes) for name in names]
        last_stack_position = max(position for position, inside in enumerate(in_stack) if inside)
        keep = tuple(block_prefixes[n_blocks - n_last:])
        return [name for position, name in enumerate(names)
                if position > last_stack_position or (n_last and name.startswith(keep))]
    prefixes = [prefix.strip() for prefix in spec.split(",") if prefix.strip()]
    if not prefixes:
        raise ValueError("empty parameter spec")
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(f"parameter prefix {prefix!r} matches no parameter; names start like {names[:3]}")
    return [name for name in names if name.startswith(tuple(prefixes))]


def _parse_count(spec: str) -> int:
    try:
        count = int(spec.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"parameter spec {spec!r}: expected last:N with an integer N") from None
    if count < 0:
        raise ValueError(f"parameter spec {spec!r}: N must be >= 0")
    return count


def set_trainable(model: torch.nn.Module, names: list[str]) -> list[torch.nn.Parameter]:
    """Freeze every parameter not in ``names``; return the trainable ones in model order."""
    wanted = set(names)
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in wanted)
        if name in wanted:
            trainable.append(parameter)
    if not trainable:
        raise ValueError("no trainable parameters selected")
    return trainable
