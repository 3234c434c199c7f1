"""Multiple choice (BERT §4.4, SWAG): the context paired with each ending gives one input per choice; the
pooled [CLS] of each is scored by one vector and a softmax over the choices picks the ending.

Data in the SWAG CSV layout: `sent1` (context), `sent2` (start of the ending), `ending0`..`ending3`,
`label` (the index of the right ending; absent in test files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertforge.data.tables import DataError, read_records, source_name
from bertforge.heads import BertForMultipleChoice
from bertforge.tasks.base import Feature, PredictionTable, read_ids, write_table
from bertforge.tasks.classification import accuracy


@dataclass
class ChoiceExample:
    context: str
    endings: list[str]  # each already prefixed with the start of the ending (sent2)
    label: int | None
    source: str = ""


def read_swag(path: str | Path, *, num_choices: int = 4, labelled: bool = True) -> list[ChoiceExample]:
    endings = tuple(f"ending{i}" for i in range(num_choices))
    rows = read_records(path, required=("sent1", "sent2", *endings, *(("label",) if labelled else ())))
    examples = []
    for row in rows:
        source = f"{source_name(path)}:{row['_line']}"
        label = None
        if labelled:
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise DataError(f"{source}: label {row['label']!r} is not a choice index "
                                f"0..{num_choices - 1}") from None
            if not 0 <= label < num_choices:
                raise DataError(f"{source}: label {label} is out of range 0..{num_choices - 1}")
        if not (row["sent1"] or "").strip():
            raise DataError(f"{source}: 'sent1' (the context) is empty; fill it in or remove the row")
        options = [f"{row['sent2']} {row[e]}".strip() for e in endings]
        examples.append(ChoiceExample(row["sent1"], options, label, source))
    return examples


class MultipleChoice:
    model_class = BertForMultipleChoice
    metric_names = ("accuracy",)

    def __init__(self, name: str = "swag", *, num_choices: int = 4) -> None:
        self.name, self.num_choices = "swag", num_choices

    def read(self, path: str | Path, *, labelled: bool = True) -> list[ChoiceExample]:
        return read_swag(path, num_choices=self.num_choices, labelled=labelled)

    def fit_labels(self, examples) -> None:
        """Choices are positions; no label set to learn."""

    def model_kwargs(self) -> dict:
        return {}

    def settings(self) -> dict:
        return {"task": self.name, "num_choices": self.num_choices}

    def features(self, examples: Sequence[ChoiceExample], tokenizer, *, max_seq_length: int,
                 train: bool = False) -> list[Feature]:
        contexts = [e.context for e in examples for _ in e.endings]
        endings = [ending for e in examples for ending in e.endings]
        enc = tokenizer.encode(contexts, endings, max_length=max_seq_length)
        c = self.num_choices
        return [Feature(enc.input_ids[i * c : (i + 1) * c], enc.token_type_ids[i * c : (i + 1) * c], e.label, i)
                for i, e in enumerate(examples)]

    def labels(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]:
        return {"labels": torch.tensor([f.label for f in features], dtype=torch.long)}

    def loss(self, output, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(output.logits, labels["labels"])  # softmax over the C choices

    def outputs(self, output, batch) -> list[np.ndarray]:
        return list(output.logits.float().cpu().numpy())  # B × [C]

    def evaluate(self, examples: Sequence[ChoiceExample], features: Sequence[Feature],
                 outputs: Sequence[np.ndarray]) -> dict:
        return {"accuracy": accuracy(np.stack(outputs).argmax(1), [e.label for e in examples])}

    def read_ids(self, path: str | Path, id_column: str) -> list:
        return read_ids(path, id_column)

    def write_predictions(self, path: Path, examples: Sequence[ChoiceExample], features: Sequence[Feature],
                          outputs: Sequence[np.ndarray], table: PredictionTable) -> None:
        """A CSV with the index of the chosen ending and the softmax over the choices."""
        scores = np.stack(outputs).astype(np.float64)  # [N, C]
        probs = np.exp(scores - scores.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        write_table(path, table, [int(i) for i in probs.argmax(1)], probs, [str(i) for i in range(self.num_choices)])
