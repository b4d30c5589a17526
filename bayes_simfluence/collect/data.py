"""Training and test examples: read with ``datasets``, reduced to the text fields a task needs.

Two tasks:

- ``"classification"``: a text field and a label field (ints or strings; strings are mapped to
  ids in sorted order over train and test together);
- ``"causal-lm"``: a prompt field and a target field; the loss is the mean NLL of the target
  tokens only (the prompt is context).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

TASKS = ("classification", "causal-lm")
TABLE_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Examples:
    """Examples of one split, reduced to what the loss needs.

    Attributes:
        task: ``"classification"`` or ``"causal-lm"``.
        ids: ``[n]`` identifiers (the ``id_field`` if given, else ``"<prefix>_<row>"``).
        texts: ``[n]`` input texts (classification) or prompts (causal LM).
        labels: ``[n]`` int64 label ids (classification), else ``None``.
        targets: ``[n]`` target texts (causal LM), else ``None``.
    """

    task: str
    ids: list[str]
    texts: list[str]
    labels: np.ndarray | None = None
    targets: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Any) -> "Examples":
        """The examples at ``indices`` (ints), in that order."""
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        return Examples(
            self.task,
            [self.ids[i] for i in indices],
            [self.texts[i] for i in indices],
            None if self.labels is None else self.labels[indices],
            None if self.targets is None else [self.targets[i] for i in indices],
        )

    def followed_by(self, other: "Examples") -> "Examples":
        """These examples, then ``other``'s (same task), as one set; ids must stay unique."""
        if other.task != self.task:
            raise ValueError(f"cannot join {other.task} examples to {self.task} ones")
        clashes = sorted(set(self.ids) & set(other.ids))
        if clashes:
            raise ValueError(f"example ids {clashes[:5]} are already in the training pool; ids must be unique")
        return Examples(
            self.task, self.ids + other.ids, self.texts + other.texts,
            None if self.labels is None else np.concatenate([self.labels, other.labels]),
            None if self.targets is None else self.targets + other.targets,
        )


def load_table(source: Any) -> datasets.Dataset:
    """A ``datasets.Dataset`` from a Dataset, a saved dataset directory or a json/jsonl/csv/parquet file."""
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        raise ValueError(f"got a DatasetDict with splits {list(source)}; pass one split, e.g. data['train']")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{path}: holds splits {list(loaded)}; point at one split's directory")
        return loaded
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(TABLE_SUFFIXES)}")
    bars_were_enabled = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True)
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds for a malformed file
        raise ValueError(f"{path}: could not be read as {kind} ({type(error).__name__}: {error})") from error
    finally:
        if bars_were_enabled:
            datasets.utils.enable_progress_bars()


def _column(table: datasets.Dataset, field: str, role: str, name: str) -> list:
    if field not in table.column_names:
        raise ValueError(f"{name}: no {role} field {field!r}; columns are {table.column_names}")
    values = table[field]
    missing = [row for row, value in enumerate(values) if value is None]
    if missing:
        raise ValueError(f"{name}: {role} field {field!r} is empty in row(s) {missing[:5]}")
    return list(values)


def _ids(table: datasets.Dataset, id_field: str | None, prefix: str, name: str) -> list[str]:
    if id_field is None:
        return [f"{prefix}_{row}" for row in range(len(table))]
    ids = [str(value) for value in _column(table, id_field, "id", name)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: id field {id_field!r} has duplicate values")
    return ids


def label_vocabulary(*label_lists: list) -> list:
    """Sorted distinct labels over all splits; ints stay ints (ids are then the ints themselves)."""
    values = sorted({value for labels in label_lists for value in labels}, key=lambda v: (str(type(v)), v))
    if all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        if min(values) < 0:
            raise ValueError(f"integer labels must be >= 0, got {min(values)}")
        return list(range(max(values) + 1))
    return values


def load_examples(train: Any, test: Any, task: str = "classification", text_field: str = "text",
                  label_field: str = "label", prompt_field: str = "prompt", target_field: str = "target",
                  id_field: str | None = None) -> tuple[Examples, Examples, list]:
    """Read the training pool and the test set.

    Returns:
        ``(train_examples, test_examples, label_names)``; ``label_names`` is ``[]`` for causal LM,
        else the label of each class id.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    tables = {"train": load_table(train), "test": load_table(test)}
    for split, table in tables.items():
        if len(table) == 0:
            raise ValueError(f"the {split} set is empty")
    names = {split: str(source) if not isinstance(source, datasets.Dataset) else f"{split} dataset"
             for split, source in (("train", train), ("test", test))}
    if task == "causal-lm":
        built = {split: _prompted(table, _ids(table, id_field, split, names[split]), names[split], prompt_field,
                                  target_field)
                 for split, table in tables.items()}
        return built["train"], built["test"], []
    raw = {split: _column(table, label_field, "label", names[split]) for split, table in tables.items()}
    vocabulary = label_vocabulary(raw["train"], raw["test"])
    built = {split: _labelled(table, _ids(table, id_field, split, names[split]), names[split], text_field,
                              raw[split], vocabulary)
             for split, table in tables.items()}
    return built["train"], built["test"], vocabulary


def _prompted(table: datasets.Dataset, ids: list[str], name: str, prompt_field: str, target_field: str
              ) -> Examples:
    """Causal-LM examples: the prompt and target fields of ``table``."""
    return Examples("causal-lm", ids, [str(v) for v in _column(table, prompt_field, "prompt", name)],
                    targets=[str(v) for v in _column(table, target_field, "target", name)])


def _labelled(table: datasets.Dataset, ids: list[str], name: str, text_field: str, labels: list,
              vocabulary: list) -> Examples:
    """Classification examples: the text field of ``table`` and ``labels`` as ids into ``vocabulary``."""
    index = {value: position for position, value in enumerate(vocabulary)}
    return Examples("classification", ids, [str(v) for v in _column(table, text_field, "text", name)],
                    labels=np.array([index[value] for value in labels], dtype=np.int64))


def load_added_examples(source: Any, task: str, label_names: list, text_field: str = "text",
                        label_field: str = "label", prompt_field: str = "prompt", target_field: str = "target",
                        id_field: str | None = None) -> Examples:
    """Training examples to add to a collected pool, read like the pool (``task``'s fields).

    Labels are mapped with the collection's ``label_names`` (a label it never saw is an error: the
    model's head has no class for it); without ``id_field`` the ids are ``"new_<row>"``.
    """
    table = load_table(source)
    name = str(source) if not isinstance(source, datasets.Dataset) else "added dataset"
    if len(table) == 0:
        raise ValueError(f"{name}: no examples")
    ids = _ids(table, id_field, "new", name)
    if task == "causal-lm":
        return _prompted(table, ids, name, prompt_field, target_field)
    labels = _column(table, label_field, "label", name)
    unknown = sorted({str(value) for value in labels if value not in label_names})
    if unknown:
        raise ValueError(f"{name}: label(s) {unknown[:5]} are not among the collection's labels {label_names}")
    return _labelled(table, ids, name, text_field, labels, label_names)
