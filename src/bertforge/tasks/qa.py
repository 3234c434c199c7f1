"""Extractive question answering (BERT §4.2 SQuAD v1.1, §4.3 v2.0).

The question and a window of the context form one input `[CLS] question [SEP] context-window [SEP]`;
long contexts are covered by windows starting every `doc_stride` tokens. The stride is the step between the
starts of consecutive windows everywhere in bertforge (google-research/bert's `doc_stride`, a convolution's
stride); transformers' `stride` is instead the overlap, i.e. window length minus step. A start vector S and an end
vector E are scored against every token (the head); a span i..j scores S·T_i + E·T_j, taken from the
n-best starts and ends with j >= i, j - i + 1 <= max_answer_length, inside the context, and with i in the
window where it has the most surrounding context. For v2.0 the [CLS] span is "no answer": predicted when
its score beats the best span by more than `null_score_threshold`.
Exact match and F1 follow the official evaluation scripts (v1.1 and v2.0), normalisation included.
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertforge.data import hf_datasets
from bertforge.data.tables import read_records, source_name
from bertforge.errors import DataError, OptionError
from bertforge.files import open_text, write_text_atomic
from bertforge.heads import BertForQuestionAnswering
from bertforge.tasks.base import Feature, PredictionTable


@dataclass
class QAExample:
    id: str
    title: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int] = field(default_factory=list)
    is_impossible: bool = False
    source: str = ""  # "file:line" of the question's id


def read_squad(path: str | Path, *, titles: Sequence[str] | None = None) -> list[QAExample]:
    """SQuAD JSON (v1.1 or v2.0), optionally only the articles named in `titles`."""
    path = Path(path)
    with open_text(path) as handle:
        raw = handle.read()
    try:
        articles = json.loads(raw)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not SQuAD JSON ({exc}); expected {{'data': [{{'title', 'paragraphs'}}]}}") from exc
    wanted = set(titles) if titles is not None else None
    examples, cursor, line = [], 0, 1  # ids come in file order: find each after the previous one
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                at = raw.find(f'"{qa["id"]}"', cursor)
                if at >= 0:
                    line, cursor = line + raw.count("\n", cursor, at), at
                if wanted is not None and article["title"] not in wanted:
                    continue
                examples.append(QAExample(
                    qa["id"], article["title"], qa["question"], paragraph["context"],
                    [a["text"] for a in qa.get("answers", [])],
                    [a.get("answer_start", -1) for a in qa.get("answers", [])],
                    bool(qa.get("is_impossible", False)), f"{path}:{line}"))
    return examples


def read_squad_table(source, *, titles: Sequence[str] | None = None) -> list[QAExample]:
    """SQuAD in the Hub's layout (`--dataset squad` / `squad_v2`, or its parquet or save_to_disk copy): one
    question per row, answers as {"text": [...], "answer_start": [...]}, none for an unanswerable one."""
    wanted = set(titles) if titles is not None else None
    examples = []
    for row in read_records(source, required=("id", "title", "context", "question", "answers")):
        if wanted is not None and row["title"] not in wanted:
            continue
        answers = row["answers"] or {}
        texts = list(answers.get("text") or [])
        examples.append(QAExample(str(row["id"]), row["title"], row["question"], row["context"], texts,
                                  list(answers.get("answer_start") or []), not texts,
                                  f"{source_name(source)}:{row['_line']}"))
    return examples


def is_squad_table(source) -> bool:
    """Rows from `datasets` or Parquet, not SQuAD's own JSON file."""
    return hf_datasets.is_dataset(source) or hf_datasets.is_saved_dataset(Path(source)) or \
        Path(source).suffix == ".parquet"


def examples_from_pairs(questions: Sequence[str], contexts: Sequence[str]) -> list[QAExample]:
    """Unlabelled (question, context) pairs as examples with ids "0", "1", ... (the pipelines' input)."""
    return [QAExample(str(i), "", q, c, []) for i, (q, c) in enumerate(zip(questions, contexts, strict=True))]


# The project's agreed SQuAD split (../shared/data/README.md: no SQuAD train set here): evaluate on the v1.1
# dev questions of these 13 articles, train on the other 35 (those that also appear in dev-v2.0).
AGREED_EVAL_TITLES = frozenset((
    "American_Broadcasting_Company", "Apollo_program", "Chloroplast", "Doctor_Who", "Genghis_Khan", "Kenya",
    "Martin_Luther", "Newcastle_upon_Tyne", "Nikola_Tesla", "Super_Bowl_50", "Teacher", "United_Methodist_Church",
    "Victoria_and_Albert_Museum"))


def agreed_split(examples: Sequence[QAExample]) -> tuple[list[QAExample], list[QAExample]]:
    """(training, evaluation) examples of the agreed split, each in file order."""
    return ([e for e in examples if e.title not in AGREED_EVAL_TITLES],
            [e for e in examples if e.title in AGREED_EVAL_TITLES])


# SQuAD v2.0 has only its 35 dev articles here; they are split by title like the v1.1 split above. In sorted
# title order, every fifth article from the fifth evaluates, every fifth from the third is held out to tune the
# null-score threshold, and the other 21 train.
SQUAD_V2_TUNE_TITLES = frozenset((
    "Black_Death", "Economic_inequality", "Geology", "Intergovernmental_Panel_on_Climate_Change", "Packet_switching",
    "Scottish_Parliament", "Victoria_(Australia)"))
SQUAD_V2_EVAL_TITLES = frozenset((
    "Computational_complexity_theory", "Force", "Huguenot", "Jacksonville,_Florida", "Prime_number",
    "Southern_California", "Yuan_dynasty"))


def agreed_v2_split(examples: Sequence[QAExample]) -> tuple[list[QAExample], list[QAExample], list[QAExample]]:
    """(training, threshold-tuning, evaluation) examples of dev-v2.0, each in file order."""
    held_out = SQUAD_V2_TUNE_TITLES | SQUAD_V2_EVAL_TITLES
    return ([e for e in examples if e.title not in held_out],
            [e for e in examples if e.title in SQUAD_V2_TUNE_TITLES],
            [e for e in examples if e.title in SQUAD_V2_EVAL_TITLES])


# ----- the official metrics -----------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (official script)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, *, version_2: bool = False) -> float:
    pred, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and (not pred or not truth):  # v2.0: an empty answer is right only against an empty one
        return float(pred == truth)
    common = sum((collections.Counter(pred) & collections.Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def squad_scores(examples: Sequence[QAExample], predictions: dict[str, str], *, version_2: bool = False) -> dict:
    """EM and F1 in percent, the max over the gold answers of each question (v1.1 / v2.0 scripts)."""
    exact, f1, has = [], [], []
    for example in examples:
        gold = [a for a in example.answers if normalize_answer(a)] if version_2 else example.answers
        gold = gold or [""]
        prediction = predictions.get(example.id, "")
        exact.append(max(exact_match(prediction, g) for g in gold))
        f1.append(max(token_f1(prediction, g, version_2=version_2) for g in gold))
        has.append(gold != [""])
    exact, f1, has = np.array(exact), np.array(f1), np.array(has, dtype=bool)
    if not len(exact):
        return {"exact_match": 0.0, "f1": 0.0}
    scores = {"exact_match": 100 * exact.mean(), "f1": 100 * f1.mean()}
    if version_2:
        for name, rows in (("has_answer", has), ("no_answer", ~has)):
            if rows.any():
                scores[f"{name}_exact"] = 100 * exact[rows].mean()
                scores[f"{name}_f1"] = 100 * f1[rows].mean()
    return {k: float(v) for k, v in scores.items()}


def best_null_threshold(examples: Sequence[QAExample], null_margins: dict[str, float],
                        answers: dict[str, str]) -> tuple[float, dict]:
    """The null-score threshold that maximises v2.0 F1 on `examples`, and the scores it gives.

    `null_margins`: per question, null score − best span score; `answers`: the best span's text. A question
    is answered "" when its margin exceeds the threshold, so only the margins themselves need trying (the
    official script's best_f1_thresh does the same sweep). Tune on held-out questions, then evaluate others
    with `--null-score-threshold` set to the result.
    """
    if not examples:
        raise ValueError("no questions to tune the null-score threshold on")
    gold = {e.id: [a for a in e.answers if normalize_answer(a)] or [""] for e in examples}
    ids = [e.id for e in examples]
    margins = np.array([null_margins[i] for i in ids])
    with_answer = np.array([max(token_f1(answers.get(i, ""), g, version_2=True) for g in gold[i]) for i in ids])
    with_null = np.array([float(gold[i] == [""]) for i in ids])
    order = np.argsort(margins, kind="mergesort")
    # threshold = margins[order[k]]: the first k + 1 (margin <= threshold) keep their span, the rest say "".
    kept = np.cumsum(with_answer[order])
    nulled = np.concatenate([np.cumsum(with_null[order][::-1])[::-1][1:], [0.0]])
    totals = kept + nulled
    last_of_ties = np.append(np.diff(margins[order]) > 0, True)  # equal margins cannot be separated
    totals = np.where(last_of_ties, totals, -1.0)
    all_null = with_null.sum()  # a threshold below every margin
    threshold = float(margins[order[int(totals.argmax())]]) if totals.max() >= all_null else float(margins.min()) - 1
    predictions = {i: "" if null_margins[i] > threshold else answers.get(i, "") for i in ids}
    return threshold, squad_scores(examples, predictions, version_2=True)


# ----- the family ---------------------------------------------------------------------------------
# Tokens per window when a model folder saved no max_seq_length (google-research/bert's run_squad.py uses 384);
# the window step and answer length default in QuestionAnswering's constructor.
DEFAULT_MAX_LENGTH = 384

class QuestionAnswering:
    model_class = BertForQuestionAnswering
    metric_names = ("f1", "exact_match")

    def __init__(self, name: str = "squad", *, version_2: bool | None = None, doc_stride: int = 128,
                 max_query_length: int = 64, max_answer_length: int = 30, n_best_size: int = 20,
                 null_score_threshold: float = 0.0) -> None:
        key = name.lower().replace("_", "").replace("-", "")
        self.version_2 = key.startswith("squadv2") if version_2 is None else version_2
        self.name = "squad_v2" if self.version_2 else "squad"
        self.doc_stride, self.max_query_length = doc_stride, max_query_length
        self.max_answer_length, self.n_best_size = max_answer_length, n_best_size
        self.null_score_threshold = null_score_threshold

    def read(self, path: str | Path, *, titles: Sequence[str] | None = None, labelled: bool = True) -> list[QAExample]:
        if is_squad_table(path):
            return read_squad_table(path, titles=titles)
        return read_squad(path, titles=titles)

    def fit_labels(self, examples) -> None:
        """Spans need no label set."""

    def model_kwargs(self) -> dict:
        return {}

    def settings(self) -> dict:
        return {"task": self.name, "doc_stride": self.doc_stride, "max_query_length": self.max_query_length,
                "max_answer_length": self.max_answer_length, "n_best_size": self.n_best_size,
                "null_score_threshold": self.null_score_threshold}

    def features(self, examples: Sequence[QAExample], tokenizer, *, max_seq_length: int,
                 train: bool = False) -> list[Feature]:
        questions = tokenizer.encode([e.question for e in examples], add_special_tokens=False, truncation=None,
                                     max_length=10**9).input_ids
        contexts = sorted({e.context for e in examples})
        enc = tokenizer.encode(contexts, add_special_tokens=False, truncation=None, max_length=10**9)
        tokens = {c: (ids, offsets) for c, ids, offsets in zip(contexts, enc.input_ids, enc.offsets, strict=True)}
        features = []
        for n, (example, question) in enumerate(zip(examples, questions, strict=True)):
            question = question[: self.max_query_length]
            ids, offsets = tokens[example.context]
            answer = self._answer_tokens(example, offsets) if train else None
            room = max_seq_length - len(question) - 3  # [CLS] question [SEP] window [SEP]
            if room < 1:
                raise OptionError(f"a maximum length of {max_seq_length} tokens leaves no room for the context after "
                                  f"a {len(question)}-token question; raise it or lower max_query_length")
            windows = _windows(len(ids), room, self.doc_stride)
            for start, length in windows:
                head = [tokenizer.cls_id, *question, tokenizer.sep_id]
                input_ids = head + ids[start : start + length] + [tokenizer.sep_id]
                types = [0] * len(head) + [1] * (length + 1)
                label = (0, 0)  # [CLS]: no answer in this window (BERT §4.3)
                if answer is not None and start <= answer[0] and answer[1] < start + length:
                    label = (len(head) + answer[0] - start, len(head) + answer[1] - start)
                extra = {"context_offset": len(head), "length": length, "offsets": offsets[start : start + length],
                         "max_context": [_is_max_context(windows, start, i) for i in range(start, start + length)]}
                features.append(Feature(input_ids, types, label, n, extra))
        return features

    def _answer_tokens(self, example: QAExample, offsets) -> tuple[int, int] | None:
        """The first gold answer as (first, last) context token, or None for an unanswerable question."""
        if example.is_impossible or not example.answers:
            if not self.version_2 and not example.is_impossible:
                raise DataError(f"{example.source}: question {example.id} has no answer; SQuAD v1.1 training "
                                "needs one (use --task squad_v2 for unanswerable questions)")
            return None
        text, begin = example.answers[0], example.answer_starts[0]
        if example.context[begin : begin + len(text)] != text:
            begin = example.context.find(text)
            if begin < 0:
                raise DataError(f"{example.source}: question {example.id}: answer {text!r} does not occur in its "
                                "context; fix the answer text (or answer_start) or remove the question")
        end = begin + len(text)
        inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > begin]
        return (inside[0], inside[-1]) if inside else None

    def labels(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]:
        spans = torch.tensor([f.label for f in features], dtype=torch.long)  # [B, 2]
        return {"start": spans[:, 0], "end": spans[:, 1]}

    def loss(self, output, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean of the start and end log-likelihoods (BERT §4.2)."""
        return (F.cross_entropy(output.start_logits, labels["start"]) +
                F.cross_entropy(output.end_logits, labels["end"])) / 2

    def outputs(self, output, batch) -> list[np.ndarray]:
        """Per feature, the [T_i, 2] (start, end) logits of its real tokens, the layout `head_logits` gives."""
        lengths = batch["attention_mask"].sum(1).tolist()
        spans = torch.stack([output.start_logits, output.end_logits], -1).float().cpu().numpy()  # [B, T, 2]
        return [row[:n] for row, n in zip(spans, lengths, strict=True)]

    def nbest(self, examples: Sequence[QAExample], features: Sequence[Feature],
              outputs: Sequence[np.ndarray]) -> dict[str, dict]:
        """Per question, the n best spans {text, score, probability, start, end} and the null score ([CLS]).
        `score` is the logit sum S·T_i + E·T_j; `probability` a softmax over the n best scores (and, for v2.0,
        the null score), as google-research/bert's nbest_predictions.json."""
        by_example = collections.defaultdict(list)
        for feature, logits in zip(features, outputs, strict=True):
            by_example[feature.example].append((feature, logits))
        results = {}
        for n, example in enumerate(examples):
            candidates, null = [], float("inf")
            for feature, logits in by_example[n]:
                null = min(null, float(logits[0, 0] + logits[0, 1]))
                candidates += self._candidates(feature, logits[:, 0], logits[:, 1])
            candidates.sort(key=lambda c: -c[0])
            best = candidates[: self.n_best_size]
            spans = [self._span(example, feature, i, j, score) for score, feature, i, j in best]
            results[example.id] = {"null_score": null, "spans": spans, **self._probabilities(spans, null)}
        return results

    def _candidates(self, feature: Feature, start_logits: np.ndarray, end_logits: np.ndarray) -> list[tuple]:
        """(score, feature, i, j) for the spans of one window: i among the n best starts and in its max-context
        window, j among the n best ends, i <= j, at most max_answer_length tokens."""
        off, length = feature.extra["context_offset"], feature.extra["length"]
        starts = np.argsort(start_logits[off : off + length])[::-1][: self.n_best_size]
        ends = np.argsort(end_logits[off : off + length])[::-1][: self.n_best_size]
        found = []
        for i in starts:
            if not feature.extra["max_context"][i]:
                continue
            for j in ends:
                if j < i or j - i + 1 > self.max_answer_length:
                    continue
                found.append((float(start_logits[off + i] + end_logits[off + j]), feature, int(i), int(j)))
        return found

    def _probabilities(self, spans: list[dict], null: float) -> dict:
        """Adds each span's probability; returns the null answer's (0 unless v2.0, whose null competes)."""
        scores = np.array([s["score"] for s in spans] + ([null] if self.version_2 else []), dtype=np.float64)
        if not len(scores):
            return {"null_probability": 0.0}
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        for span, p in zip(spans, probs, strict=False):
            span["probability"] = float(p)
        return {"null_probability": float(probs[-1]) if self.version_2 else 0.0}

    @staticmethod
    def _span(example: QAExample, feature: Feature, i: int, j: int, score: float) -> dict:
        """Window tokens i..j back to the characters of the original context."""
        begin, end = feature.extra["offsets"][i][0], feature.extra["offsets"][j][1]
        return {"text": example.context[begin:end], "score": score, "start": begin, "end": end}

    def answers(self, examples: Sequence[QAExample], features: Sequence[Feature],
                outputs: Sequence[np.ndarray]) -> list[dict]:
        """Per question, in order, {answer, score, start, end}: the best span with its probability among the
        n best; for v2.0 the empty answer when the null score beats the best span by more than
        null_score_threshold (BERT §4.3). `start`/`end` are character offsets into the context."""
        found = self.nbest(examples, features, outputs)
        answers = []
        for example in examples:
            result = found[example.id]
            spans = result["spans"]
            if not spans or (self.version_2 and result["null_score"] - spans[0]["score"] > self.null_score_threshold):
                answers.append({"answer": "", "score": result["null_probability"], "start": 0, "end": 0})
            else:
                best = spans[0]
                answers.append({"answer": best["text"], "score": best["probability"], "start": best["start"],
                                "end": best["end"]})
        return answers

    def predictions(self, examples, features, outputs) -> dict[str, str]:
        """Question id -> answer text ("" = no answer, v2.0)."""
        answers = self.answers(examples, features, outputs)
        return {example.id: answer["answer"] for example, answer in zip(examples, answers, strict=True)}

    def evaluate(self, examples: Sequence[QAExample], features: Sequence[Feature],
                 outputs: Sequence[np.ndarray]) -> dict:
        return squad_scores(examples, self.predictions(examples, features, outputs), version_2=self.version_2)

    def read_ids(self, path: str | Path, id_column: str) -> list:
        raise OptionError(f"--id-column {id_column}: SQuAD predictions are keyed by the question ids of the input; "
                          "leave --id-column out")

    def write_predictions(self, path: Path, examples: Sequence[QAExample], features: Sequence[Feature],
                          outputs: Sequence[np.ndarray], table: PredictionTable) -> None:
        """JSON {question id: answer}, as the official evaluation script reads it."""
        write_text_atomic(path, json.dumps(self.predictions(examples, features, outputs), indent=2) + "\n")


def _windows(n_tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of the context windows: a new one every `stride` tokens until the end is covered."""
    windows, start = [], 0
    while True:
        length = min(n_tokens - start, room)
        windows.append((start, length))
        if start + length >= n_tokens:
            return windows
        start += min(length, stride)


def _is_max_context(windows: list[tuple[int, int]], current: int, position: int) -> bool:
    """Whether the window starting at `current` gives token `position` the most context on its shorter side
    (google-research/bert's rule; a small bonus for longer windows breaks ties)."""
    best, best_start = None, None
    for start, length in windows:
        if not start <= position < start + length:
            continue
        score = min(position - start, start + length - 1 - position) + 0.01 * length
        if best is None or score > best:
            best, best_start = score, start
    return best_start == current
