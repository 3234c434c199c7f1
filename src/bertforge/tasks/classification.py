"""Sentence and sentence-pair classification from [CLS] (BERT §4.1): all of GLUE with its official
metrics, the user's own CSV/TSV/JSONL (single-label, multi-label, regression), and a sliding window over
texts longer than the model's window (chunk logits averaged per text).

Metrics follow GLUE's definitions: CoLA Matthews correlation, MRPC/QQP F1 of the positive class and
accuracy, STS-B Pearson and Spearman, the rest accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from bertforge.data import hf_datasets
from bertforge.data.tables import DataError, read_records, source_name
from bertforge.files import open_text
from bertforge.heads import BertForSequenceClassification
from bertforge.tasks.base import Feature, PredictionTable, read_ids, write_table

LongText = Literal["truncate", "sliding_window"]


# ----- metrics ------------------------------------------------------------------------------------
def accuracy(predictions: Sequence, labels: Sequence) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels))) if len(labels) else 0.0


def f1_binary(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (GLUE MRPC/QQP, Kaggle Disaster Tweets)."""
    p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> float:
    return float(np.mean([f1_binary(predictions, labels, c) for c in range(num_labels)]))


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Multi-class Matthews correlation (Gorodkin 2004); 0 when either side is constant (CoLA)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(p, y)
    confusion = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], dtype=np.float64)
    t, q = confusion.sum(1), confusion.sum(0)  # true and predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = math.sqrt((s * s - q @ q) * (s * s - t @ t))
    return 0.0 if denominator == 0 else float((c * s - t @ q) / denominator)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return 0.0 if denominator == 0 else float((x * y).sum() / denominator)


def rank(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given their average rank (what Spearman's rho needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[order[j + 1]] == values[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(rank(x), rank(y))


# ----- GLUE layouts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE TSV keeps its fields (header names; CoLA's train/dev have no header: indices), and
    where the Hub's `glue` dataset (`--dataset glue:sst2`, parquet or save_to_disk copies) keeps them."""

    text: str | int
    pair: str | int | None
    label: str | int
    labels: tuple[str, ...] | None  # None = regression
    metrics: tuple[str, ...]  # the first is the one the best checkpoint is chosen by
    validation: tuple[str, ...] = ("dev.tsv",)
    hub_columns: tuple[str, str | None] = ("sentence1", "sentence2")  # the label is always "label"
    hub_labels: tuple[str, ...] = ()  # the Hub's class names, in the order of its integer labels

    def from_hub(self, value) -> str:
        """The TSV spelling of a Hub label: its class name where the TSV uses names (MNLI, QNLI, RTE), its
        index where the TSV uses 0/1 (SST-2's "positive" is "1"). `value` is a class name or its index."""
        name = self.hub_labels[value] if isinstance(value, int) and 0 <= value < len(self.hub_labels) else str(value)
        if name in self.labels or name not in self.hub_labels:
            return name
        return self.labels[self.hub_labels.index(name)]


_NLI = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(3, None, 1, ("0", "1"), ("matthews", "accuracy"), hub_columns=("sentence", None),
                     hub_labels=("unacceptable", "acceptable")),
    "sst2": GlueTask("sentence", None, "label", ("0", "1"), ("accuracy",), hub_columns=("sentence", None),
                     hub_labels=("negative", "positive")),
    "mrpc": GlueTask("#1 String", "#2 String", "Quality", ("0", "1"), ("f1", "accuracy"),
                     hub_labels=("not_equivalent", "equivalent")),
    "qqp": GlueTask("question1", "question2", "is_duplicate", ("0", "1"), ("f1", "accuracy"),
                    hub_columns=("question1", "question2"), hub_labels=("not_duplicate", "duplicate")),
    "stsb": GlueTask("sentence1", "sentence2", "score", None, ("pearson", "spearman")),
    "mnli": GlueTask("sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral"),
                     ("accuracy",), ("dev_matched.tsv", "dev_mismatched.tsv"), hub_columns=("premise", "hypothesis"),
                     hub_labels=("entailment", "neutral", "contradiction")),
    "qnli": GlueTask("question", "sentence", "label", _NLI, ("accuracy",), hub_columns=("question", "sentence"),
                     hub_labels=_NLI),
    "rte": GlueTask("sentence1", "sentence2", "label", _NLI, ("accuracy",), hub_labels=_NLI),
    "wnli": GlueTask("sentence1", "sentence2", "label", ("0", "1"), ("accuracy",),
                     hub_labels=("not_entailment", "entailment")),
}


@dataclass
class TextExample:
    text: str
    pair: str | None = None
    label: str | float | list[str] | None = None
    source: str = ""  # "file:line", for error messages


def read_glue(task: str, path: str | Path) -> list[TextExample]:
    """A GLUE TSV. Fields are split on tabs only: GLUE text holds bare quotes (MRPC) that a CSV reader
    would take for quoting. The MRPC header's byte-order mark is dropped; CoLA train/dev have no header."""
    spec, path = GLUE_TASKS[task], Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give its file (GLUE {task} expects train.tsv and dev.tsv in it)")
    if not path.is_file():
        raise DataError(f"{path}: no such file (GLUE {task} expects train.tsv and dev.tsv in its folder)")
    with open_text(path) as handle:
        rows = [line.rstrip("\r\n").split("\t") for line in handle]
    if not rows:
        raise DataError(f"{path}: empty file")
    rows[0][0] = rows[0][0].lstrip("\ufeff")
    has_header = isinstance(spec.text, str) or rows[0][0] == "index"
    header = rows[0] if has_header else None

    def column(field: str | int | None, required: bool) -> int | None:
        if field is None or isinstance(field, int) and header is None:
            return field
        name = {3: "sentence"}.get(field, field) if isinstance(field, int) else field  # CoLA test: index, sentence
        if name not in header:
            if required:
                raise DataError(f"{path}:1: no column {name!r} in the header {header}; is this the GLUE {task} file?")
            return None
        return header.index(name)

    text, pair = column(spec.text, True), column(spec.pair, spec.pair is not None)
    label = column(spec.label, False)  # test files carry no label
    examples = []
    for line_no, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        if row == [""]:
            continue
        needed = max(i for i in (text, pair, label) if i is not None)
        if len(row) <= needed:
            raise DataError(f"{path}:{line_no}: {len(row)} tab-separated fields, expected at least {needed + 1}; "
                            "a tab is missing or the line was cut")
        value = row[label] if label is not None else None
        if value is not None and spec.labels is None:
            value = _number(value, f"{path}:{line_no}")
        examples.append(TextExample(row[text], row[pair] if pair is not None else None, value, f"{path}:{line_no}"))
    return examples


def is_glue_tsv(source) -> bool:
    """A GLUE task's own TSV file (anything else, e.g. the Hub's copy, is read by read_glue_table)."""
    return not hf_datasets.is_dataset(source) and ".tsv" in Path(source).suffixes


def read_glue_table(task: str, source) -> list[TextExample]:
    """A GLUE task in the Hub's layout (`datasets.load_dataset("glue", task)`, or its parquet or
    save_to_disk copy): the Hub's columns and class names, labels given as the TSV files spell them."""
    spec = GLUE_TASKS[task]
    text, pair = spec.hub_columns
    examples = []
    for row in read_records(source, required=tuple(c for c in (text, pair) if c)):
        where = f"{source_name(source)}:{row['_line']}"
        label = row.get("label")
        label = None if label == -1 else label  # -1: the Hub's unlabelled test rows
        if label is not None:
            label = _number(label, where) if spec.labels is None else spec.from_hub(label)
            if spec.labels is not None and label not in spec.labels:
                raise DataError(f"{where}: label {row['label']!r} is not one of GLUE {task}'s labels "
                                f"{list(spec.hub_labels)}; is this the {task} data?")
        examples.append(TextExample(_text(row[text], where, text), _text(row[pair], where, pair) if pair else None,
                                    label, where))
    return examples


def read_table(path: str | Path, *, text_column: str, text_pair_column: str | None = None,
               label_column: str | None = None, kind: str = "classification",
               label_separator: str = ",") -> list[TextExample]:
    """The user's own CSV/TSV/JSONL. `kind`: classification, regression (float label) or multilabel
    (a JSON list, or labels joined by `label_separator`)."""
    columns = {text_column: "--text-column", text_pair_column: "--text-pair-column", label_column: "--label-column"}
    required = {c: option for c, option in columns.items() if c}
    examples = []
    for row in read_records(path, required=required):
        source = f"{source_name(path)}:{row['_line']}"
        label = row.get(label_column) if label_column else None
        if label_column and kind == "multilabel" and (label is None or str(label).strip() == ""):
            label = []  # a row may carry none of the labels: an empty cell is the empty set
        elif label_column and (label is None or str(label).strip() == ""):
            raise DataError(f"{source}: empty {label_column!r}; give every row a label or drop the row")
        if label is not None:
            if kind == "regression":
                label = _number(label, source)
            elif kind == "multilabel":
                parts = label if isinstance(label, list) else str(label).split(label_separator)
                label = sorted({str(p).strip() for p in parts if str(p).strip()})
            else:
                label = str(label).strip()
        pair = row.get(text_pair_column) if text_pair_column else None
        examples.append(TextExample(_text(row[text_column], source, text_column),
                                    _text(pair, source, text_pair_column) if text_pair_column else None, label, source))
    return examples


def _text(value, source: str, column: str) -> str:
    if value is None or not isinstance(value, str) or not value.strip():
        shown = "empty" if value is None or isinstance(value, str) else f"a {type(value).__name__}"
        raise DataError(f"{source}: {column!r} is {shown}; every row needs a text (remove the row or fill it in)")
    return value


def _number(value, source: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{source}: label {value!r} is not a number; a regression task needs numeric labels") from None


def sorted_labels(values) -> list[str]:
    """Labels in a stable order: numerically when they are all integers ("2" < "10"), else by text."""
    values = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return values


# ----- the family ---------------------------------------------------------------------------------
class SequenceClassification:
    """GLUE tasks by name, or `classification` / `regression` / `multilabel` on the user's own tables."""

    model_class = BertForSequenceClassification

    def __init__(self, name: str, *, labels: Sequence[str] | None = None, long_text: LongText = "truncate",
                 doc_stride: int | None = None, text_column: str = "text", text_pair_column: str | None = None,
                 label_column: str = "label", label_separator: str = ",", threshold: float = 0.5) -> None:
        name = name.lower().replace("-", "").replace("_", "")
        self.name = name
        self.glue = GLUE_TASKS.get(name)
        self.kind = "glue" if self.glue else name
        if self.glue and self.glue.labels is None:
            self.kind = "regression"
        fixed = list(self.glue.labels) if self.glue and self.glue.labels else None
        self.label_names = list(labels) if labels else fixed
        self.long_text, self.doc_stride = long_text, doc_stride
        self.columns = (text_column, text_pair_column, label_column)
        self.label_separator, self.threshold = label_separator, threshold
        self.metric_names = self.glue.metrics if self.glue else {
            "regression": ("pearson", "spearman", "mse"), "multilabel": ("micro_f1", "subset_accuracy"),
        }.get(self.kind, ("accuracy", "f1", "macro_f1"))

    # reading
    def read(self, path: str | Path, *, labelled: bool = True) -> list[TextExample]:
        if self.glue:
            return read_glue(self.name, path) if is_glue_tsv(path) else read_glue_table(self.name, path)
        text, pair, label = self.columns
        return read_table(path, text_column=text, text_pair_column=pair, label_column=label if labelled else None,
                          kind=self.kind, label_separator=self.label_separator)

    def fit_labels(self, examples: Sequence[TextExample]) -> None:
        """Take the label set from the training data (own data); GLUE's are fixed."""
        if self.kind == "regression" or self.label_names:
            return
        values = [v for e in examples for v in (e.label if self.kind == "multilabel" else [e.label])]
        self.label_names = sorted_labels(values)
        if self.kind != "multilabel" and len(self.label_names) < 2:
            raise DataError(f"{examples[0].source.rsplit(':', 1)[0]}: only one label ({self.label_names}) in the "
                            "training data; classification needs at least two")

    def model_kwargs(self) -> dict:
        if self.kind == "multilabel":  # saved as transformers' problem_type: its pipelines then use a sigmoid
            return {"labels": self.label_names, "problem_type": "multi_label_classification"}
        return {"num_labels": 1} if self.kind == "regression" else {"labels": self.label_names}

    def settings(self) -> dict:
        """What predict/evaluate need to rebuild this family from a saved model's config.json."""
        return {"task": self.name, "long_text": self.long_text, "doc_stride": self.doc_stride,
                "text_column": self.columns[0], "text_pair_column": self.columns[1], "label_column": self.columns[2],
                "label_separator": self.label_separator, "threshold": self.threshold}

    # features
    def _label_value(self, example: TextExample):
        if example.label is None:
            return None
        if self.kind == "regression":
            return float(example.label)
        index = {name: i for i, name in enumerate(self.label_names)}
        wanted = example.label if self.kind == "multilabel" else [example.label]
        for value in wanted:
            if value not in index:
                raise DataError(f"{example.source}: label {value!r} was not seen in training (labels: "
                                f"{self.label_names}); fix the label or add training examples of it")
        if self.kind == "multilabel":
            hot = [0.0] * len(self.label_names)
            for value in wanted:
                hot[index[value]] = 1.0
            return hot
        return index[example.label]

    def features(self, examples: Sequence[TextExample], tokenizer, *, max_seq_length: int,
                 train: bool = False) -> list[Feature]:
        labels = [self._label_value(e) for e in examples]
        pairs = [e.pair for e in examples] if examples and examples[0].pair is not None else None
        if self.long_text == "sliding_window":
            if pairs is not None:
                raise ValueError("long_text='sliding_window' works on single texts; use truncate for text pairs")
            return self._windows(examples, labels, tokenizer, max_seq_length)
        enc = tokenizer.encode([e.text for e in examples], pairs, max_length=max_seq_length)
        return [Feature(ids, types, label, i)
                for i, (ids, types, label) in enumerate(zip(enc.input_ids, enc.token_type_ids, labels, strict=True))]

    def _windows(self, examples, labels, tokenizer, max_seq_length: int) -> list[Feature]:
        """Every text as overlapping chunks of max_seq_length - 2 tokens, each `[CLS] chunk [SEP]` with the
        text's label; a new chunk starts every `doc_stride` tokens (default: half a chunk)."""
        size = max_seq_length - 2
        step = self.doc_stride or max(1, size // 2)
        enc = tokenizer.encode([e.text for e in examples], add_special_tokens=False, truncation=None,
                               max_length=10**9)
        features = []
        for i, (ids, label) in enumerate(zip(enc.input_ids, labels, strict=True)):
            starts = range(0, max(1, len(ids) - size + step), step) if len(ids) > size else [0]
            for start in starts:
                chunk = [tokenizer.cls_id, *ids[start : start + size], tokenizer.sep_id]
                features.append(Feature(chunk, [0] * len(chunk), label, i))
        return features

    # training
    def labels(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]:
        dtype = torch.long if self.kind not in ("regression", "multilabel") else torch.float
        return {"labels": torch.tensor([f.label for f in features], dtype=dtype)}

    def loss(self, output, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, target = output.logits, labels["labels"]
        if self.kind == "regression":  # one output: mean squared error (GLUE STS-B)
            return F.mse_loss(logits.squeeze(-1), target)
        if self.kind == "multilabel":  # independent yes/no per label
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target)

    def outputs(self, output, batch) -> list[np.ndarray]:
        return list(output.logits.float().cpu().numpy())  # B × [C]

    # evaluation
    def example_scores(self, features: Sequence[Feature], outputs: Sequence[np.ndarray], n: int) -> np.ndarray:
        """[N, C] per example: the mean logits of its chunks (one chunk unless sliding_window)."""
        sums = np.zeros((n, len(outputs[0])), dtype=np.float64)
        counts = np.zeros(n)
        for feature, logits in zip(features, outputs, strict=True):
            sums[feature.example] += logits
            counts[feature.example] += 1
        return sums / np.maximum(counts, 1)[:, None]

    def predict(self, scores: np.ndarray) -> tuple[list, np.ndarray]:
        """(predicted labels, probabilities [N, C]) from example scores."""
        if self.kind == "regression":
            return [float(s) for s in scores[:, 0]], scores
        if self.kind == "multilabel":
            probs = 1 / (1 + np.exp(-scores))
            return [[self.label_names[j] for j in np.flatnonzero(row >= self.threshold)] for row in probs], probs
        probs = np.exp(scores - scores.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        return [self.label_names[j] for j in probs.argmax(1)], probs

    def answers(self, examples: Sequence[TextExample], features: Sequence[Feature],
                outputs: Sequence[np.ndarray]) -> list[dict]:
        """Per example {label, score, scores: {label: probability}}, or {value} for regression. Multi-label
        models score each label by its own sigmoid (as transformers' pipeline does); `label` is the likeliest,
        and `labels` the predicted set: every label at or above the model's threshold, as `predict` writes."""
        predicted, probs = self.predict(self.example_scores(features, outputs, len(examples)))
        if self.kind == "regression":
            return [{"value": float(row[0])} for row in probs]
        answers = []
        for labels, row in zip(predicted, probs, strict=True):
            best = int(row.argmax())
            answer = {"label": self.label_names[best], "score": float(row[best]),
                      "scores": dict(zip(self.label_names, map(float, row), strict=True))}
            if self.kind == "multilabel":
                answer["labels"] = list(labels)
            answers.append(answer)
        return answers

    def read_ids(self, path: str | Path, id_column: str) -> list:
        return read_ids(path, id_column)

    def write_predictions(self, path: Path, examples: Sequence[TextExample], features: Sequence[Feature],
                          outputs: Sequence[np.ndarray], table: PredictionTable) -> None:
        """A CSV with the predicted label (labels joined by ';' for multi-label) and one probability per class."""
        labels, probs = self.predict(self.example_scores(features, outputs, len(examples)))
        write_table(path, table, labels, probs, self.label_names or ["score"])

    def evaluate(self, examples: Sequence[TextExample], features: Sequence[Feature],
                 outputs: Sequence[np.ndarray]) -> dict:
        scores = self.example_scores(features, outputs, len(examples))
        return self.metrics(scores, [self._label_value(e) for e in examples])

    def metrics(self, scores: np.ndarray, gold: list) -> dict:
        if self.kind == "regression":
            pred = scores[:, 0]
            return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold),
                    "mse": float(np.mean((pred - np.asarray(gold)) ** 2))}
        if self.kind == "multilabel":
            pred = (1 / (1 + np.exp(-scores))) >= self.threshold
            gold = np.asarray(gold) > 0.5
            tp, fp, fn = (pred & gold).sum(), (pred & ~gold).sum(), (~pred & gold).sum()
            return {"micro_f1": float(0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)),
                    "subset_accuracy": float((pred == gold).all(1).mean())}
        pred = scores.argmax(1)
        result = {"accuracy": accuracy(pred, gold)}
        if self.glue:
            if "matthews" in self.metric_names:
                result = {"matthews": matthews_corrcoef(pred, gold), **result}
            if "f1" in self.metric_names:
                result = {"f1": f1_binary(pred, gold), **result}
            return result
        if len(self.label_names) == 2:  # the second label in sorted order ("1", "true", "pos") is positive
            result["f1"] = f1_binary(pred, gold)
        result["macro_f1"] = f1_macro(pred, gold, len(self.label_names))
        return result
