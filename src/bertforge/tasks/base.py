"""What every task family gives the fine-tuning loop, and the padding shared by all of them.

A family turns examples into `Feature`s (token ids, segment ids, a label), collates them into padded
tensors, computes its loss from the head's output, and turns the model's per-feature outputs back into
per-example predictions and the task's official metrics.
Shapes: B = batch, T = longest sequence in the batch, C = classes or choices.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

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


class TaskFamily(Protocol):
    """The interface `training.finetune` drives; see tasks/classification.py for the reference one."""

    name: str
    model_class: type[nn.Module]

    def model_kwargs(self) -> dict: ...

    def features(self, examples: Sequence, tokenizer, *, max_seq_length: int, train: bool) -> list[Feature]: ...

    def labels(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]: ...

    def loss(self, output, labels: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def outputs(self, output, batch: dict[str, torch.Tensor]) -> list[np.ndarray]: ...

    def evaluate(self, examples: Sequence, features: Sequence[Feature], outputs: Sequence[np.ndarray]) -> dict: ...


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


def family(name: str, **settings) -> TaskFamily:
    """The task family for a task name. `settings` are options (columns, doc_stride, ...); each family
    takes those its constructor names and ignores the rest, so one CLI can carry all of them."""
    cls = family_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    chosen = {k: v for k, v in settings.items() if k in accepted and v is not None}
    return cls(name, **chosen)


def family_class(name: str) -> type:
    from bertforge.tasks.classification import GLUE_TASKS

    key = name.lower().replace("-", "").replace("_", "")
    if key in GLUE_TASKS or key in ("classification", "regression", "multilabel"):
        from bertforge.tasks.classification import SequenceClassification

        return SequenceClassification
    if key in ("ner", "conll", "conll2003", "tokenclassification"):
        from bertforge.tasks.ner import TokenClassification

        return TokenClassification
    if key in ("squad", "squadv1", "squadv11", "squadv2", "squadv20", "qa"):
        from bertforge.tasks.qa import QuestionAnswering

        return QuestionAnswering
    if key in ("swag", "multiplechoice"):
        from bertforge.tasks.multiple_choice import MultipleChoice

        return MultipleChoice
    tasks = [*GLUE_TASKS, "classification", "regression", "multilabel", "ner", "squad", "squad_v2", "swag"]
    from bertforge.data.tables import DataError

    raise DataError(f"unknown task {name!r}; choose one of {', '.join(tasks)}")
