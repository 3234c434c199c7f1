"""What every task family gives the jobs, and the padding and prediction tables shared by all of them.

A family reads examples, turns them into `Feature`s (token ids, segment ids, a label), collates them into
padded tensors, computes its loss from the head's output, and turns the model's per-feature outputs back into
per-example answers, the task's official metrics, and `predict`'s output file. Training, evaluate, predict,
the pipelines and the HTTP service all decode through these same methods.

Per-feature outputs are the head's logits (`head_logits` in heads.py) over that feature: [C] for a
sequence-level head, [T_i, C] (or [T_i, 2] start/end for spans) over its real tokens for a token-level one.
Shapes: B = batch, T = longest sequence in the batch, C = classes or choices.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from bertforge.data.tables import read_records
from bertforge.files import write_atomic

IGNORE_INDEX = -100  # label of positions that take no loss (torch's cross_entropy default)


@dataclass
class Feature:
    """One model input. input_ids: [T] (or [C][T] for multiple choice); `example` indexes the example it
    came from (several features per example for sliding windows); `extra` is family-specific."""

    input_ids: list[int] | list[list[int]]
    token_type_ids: list[int] | list[list[int]]
    label: Any = None
    example: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        ids = self.input_ids
        return max(len(x) for x in ids) if ids and isinstance(ids[0], list) else len(ids)


@dataclass(frozen=True)
class PredictionTable:
    """How `predict` lays out a table of predictions: an optional id column copied from the input (`ids`, in
    input order), the predicted label's column, and one probability column per class when asked."""

    id_column: str | None = None
    ids: list | None = None
    label_column: str = "label"
    probabilities: bool = True


class TaskFamily(Protocol):
    """The interface the jobs drive; see tasks/classification.py for the reference one."""

    name: str
    model_class: type[nn.Module]
    metric_names: Sequence[str]

    def read(self, path: Path, *, labelled: bool = True) -> list: ...

    def fit_labels(self, examples: Sequence) -> None: ...

    def model_kwargs(self) -> dict: ...

    def settings(self) -> dict: ...

    def features(self, examples: Sequence, tokenizer, *, max_seq_length: int, train: bool) -> list[Feature]: ...

    def labels(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]: ...

    def loss(self, output, labels: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def outputs(self, output, batch: dict[str, torch.Tensor]) -> list[np.ndarray]: ...

    def evaluate(self, examples: Sequence, features: Sequence[Feature], outputs: Sequence[np.ndarray]) -> dict: ...

    def read_ids(self, path: Path, id_column: str) -> list: ...

    def write_predictions(self, path: Path, examples: Sequence, features: Sequence[Feature],
                          outputs: Sequence[np.ndarray], table: PredictionTable) -> None: ...


def pad(rows: Sequence[Sequence[int]], fill: int, width: int | None = None) -> torch.Tensor:
    """Ragged rows -> [B, T] int64, T = the longest row (dynamic padding) unless `width` is given."""
    width = width or max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def collate(features: Sequence[Feature], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, token_type_ids, attention_mask: [B, T], or [B, C, T] when each feature has C choices."""
    if features and features[0].input_ids and isinstance(features[0].input_ids[0], list):
        choices = len(features[0].input_ids)
        width = max(f.length for f in features)
        flat = lambda name: [row for f in features for row in getattr(f, name)]  # noqa: E731
        ids = pad(flat("input_ids"), pad_id, width).view(len(features), choices, width)
        types = pad(flat("token_type_ids"), 0, width).view(len(features), choices, width)
        mask = _mask(flat("input_ids"), width).view(len(features), choices, width)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    ids = pad([f.input_ids for f in features], pad_id)
    return {"input_ids": ids, "token_type_ids": pad([f.token_type_ids for f in features], 0),
            "attention_mask": _mask([f.input_ids for f in features], ids.shape[1])}


def _mask(rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    # From the lengths, not from `ids != pad_id`: a vocabulary may use id 0 for a real token.
    lengths = torch.tensor([len(r) for r in rows])
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def read_ids(path: Path, id_column: str) -> list:
    """The `id_column` of a CSV/TSV/JSONL input, in row order (checked before any model runs)."""
    return [row[id_column] for row in read_records(path, required={id_column: "--id-column"})]


def write_table(path: Path, table: PredictionTable, labels: Sequence, probs: np.ndarray, names: Sequence[str]) -> None:
    """A CSV: [id,] label[, prob_<name>...] per example; a list of labels (multi-label) is joined with ';'."""
    header = ([table.id_column] if table.id_column else []) + [table.label_column] + \
        ([f"prob_{n}" for n in names] if table.probabilities else [])

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for i, label in enumerate(labels):
                label = ";".join(label) if isinstance(label, list) else label
                values = ([table.ids[i]] if table.id_column else []) + [label]
                writer.writerow(values + ([f"{p:.6f}" for p in probs[i]] if table.probabilities else []))

    write_atomic(path, write)
