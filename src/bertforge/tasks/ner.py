"""Token classification (BERT §5.3): named-entity recognition on CoNLL-2003.

Each word's label sits on its first WordPiece; the other pieces take no loss and their predictions are
ignored, so predictions map back to exactly one tag per word. Scoring is conlleval's: an entity counts
as correct only when its type and both boundaries match, in BIO (IOB2), IOB1 or IOBES tagging alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertforge.data.tables import is_table, read_records, source_name
from bertforge.errors import DataError, OptionError
from bertforge.files import open_text, write_text_atomic
from bertforge.heads import BertForTokenClassification
from bertforge.tasks.base import IGNORE_INDEX, Feature, PredictionTable

TAG = re.compile(r"^(O|[BIES]-\S+)$")


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None
    source: str = ""  # "file:line" of its first word
    text: str = ""  # the raw text the words were cut from (`split_words`), for character spans
    spans: list[tuple[int, int]] | None = None  # each word's (start, end) in `text`


def split_words(texts: Sequence[str], tokenizer) -> list[Sentence]:
    """Raw texts -> sentences of the words the tokenizer's pre-tokenizer sees (BERT splits punctuation off),
    each word with its character span, so that predictions map back onto the original text."""
    enc = tokenizer.encode(list(texts), add_special_tokens=False, truncation=None, max_length=10**9)
    sentences = []
    for text, word_ids, offsets in zip(texts, enc.word_ids, enc.offsets, strict=True):
        spans: dict[int, list[int]] = {}
        for word, (start, end) in zip(word_ids, offsets, strict=True):
            if word is None:
                continue
            span = spans.setdefault(word, [start, end])  # a word's later pieces widen its span
            span[1] = end
        ordered = [tuple(spans[w]) for w in sorted(spans)]
        sentences.append(Sentence([text[a:b] for a, b in ordered], None, text=text, spans=ordered))
    return sentences


def read_conll(path: str | Path, *, tag_column: int = -1, labelled: bool = True) -> list[Sentence]:
    """CoNLL format: one word per line with space-separated columns (word first, the tag in `tag_column`),
    a blank line between sentences, `-DOCSTART-` lines between documents."""
    path = Path(path)
    sentences, words, tags, start = [], [], [], 0
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences.append(Sentence(words, tags if labelled else None, f"{path}:{start}"))
                words, tags = [], []
                continue
            if labelled:
                if len(fields) < 2:
                    raise DataError(f"{path}:{line_no}: {line.strip()!r} has no tag column; each line needs "
                                    "'word ... TAG' separated by spaces, and a blank line between sentences")
                tag = fields[tag_column]
                if not TAG.match(tag):
                    raise DataError(f"{path}:{line_no}: tag {tag!r} is not O, B-TYPE, I-TYPE, E-TYPE or S-TYPE; "
                                    "is the tag in the last column?")
                tags.append(tag)
            words.append(fields[0])
            start = start if len(words) > 1 else line_no
    if words:
        sentences.append(Sentence(words, tags if labelled else None, f"{path}:{start}"))
    return sentences


def _holds_lists(source) -> bool:
    """Sources whose rows can hold lists: datasets, Parquet, JSON Lines (not CSV/TSV, nor CoNLL text)."""
    return is_table(source) and not str(source).endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz"))


def read_token_table(source, *, words: str = "tokens", tags: str = "ner_tags",
                     labelled: bool = True) -> list[Sentence]:
    """One sentence per row, a list of words and a list of tags: the Hub's `conll2003` layout
    (`--dataset conll2003`, or its parquet or save_to_disk copy)."""
    sentences = []
    for row in read_records(source, required=(words, tags) if labelled else (words,)):
        where = f"{source_name(source)}:{row['_line']}"
        row_words, row_tags = list(row[words] or []), list(row[tags] or []) if labelled else None
        if labelled:
            if len(row_words) != len(row_tags):
                raise DataError(f"{where}: {len(row_words)} words but {len(row_tags)} tags; every word needs a tag")
            bad = next((str(t) for t in row_tags if not TAG.match(str(t))), None)
            if bad is not None:
                raise DataError(f"{where}: tag {bad!r} is not O, B-TYPE, I-TYPE, E-TYPE or S-TYPE; are the tags "
                                "class names (a ClassLabel column) or their strings?")
        if row_words:
            sentences.append(Sentence([str(w) for w in row_words], row_tags, where))
    return sentences


# ----- conlleval ----------------------------------------------------------------------------------
def _split(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); a label without a prefix ('PER', from some checkpoints) -> ('I', 'PER')."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return "I", tag


def _ends(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    """conlleval's endOfChunk: does the chunk that includes the previous token end before this one?"""
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev != "O" and prev_type != type_


def _starts(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    """conlleval's startOfChunk: does a chunk start at this token? (An I after O or after another
    type starts one, which is how IOB1 and sloppy BIO are read.)"""
    if tag in ("B", "S"):
        return True
    if tag in ("I", "E") and prev in ("E", "S", "O"):
        return True
    return tag != "O" and prev_type != type_


def chunks(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """Entities as (first, last, type) word positions, by conlleval's rules."""
    found, prev, prev_type, begin = set(), "O", "", None
    for i, tag in enumerate([*tags, "O"]):
        kind, type_ = _split(tag)
        if begin is not None and _ends(prev, prev_type, kind, type_):
            found.add((begin, i - 1, prev_type))
            begin = None
        if _starts(prev, prev_type, kind, type_):
            begin = i
        prev, prev_type = kind, type_
    return found


def conll_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 (overall and per type) and token accuracy, as conlleval
    computes them; every sentence is scored on its own, like conlleval's blank-line boundaries."""
    counts: dict[str, list[int]] = {}  # type -> [correct, predicted, gold]
    right = total = 0
    for g, p in zip(gold, predicted, strict=True):
        if len(g) != len(p):
            raise ValueError(f"a sentence has {len(g)} gold tags but {len(p)} predicted tags")
        gold_chunks, pred_chunks = chunks(g), chunks(p)
        for chunk in gold_chunks | pred_chunks:
            entry = counts.setdefault(chunk[2], [0, 0, 0])
            entry[0] += chunk in gold_chunks and chunk in pred_chunks
            entry[1] += chunk in pred_chunks
            entry[2] += chunk in gold_chunks
        right += sum(a == b for a, b in zip(g, p, strict=True))
        total += len(g)
    correct, n_pred, n_gold = (sum(c[k] for c in counts.values()) for k in range(3))
    result = {**_prf(correct, n_pred, n_gold), "accuracy": right / total if total else 0.0}
    for type_, (c, p, g) in sorted(counts.items()):
        result.update({f"{type_}_{k}": v for k, v in _prf(c, p, g).items()})
    return result


def _prf(correct: int, predicted: int, gold: int) -> dict:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


# ----- the family ---------------------------------------------------------------------------------
class TokenClassification:
    """NER on CoNLL-format files; the label set is read from the training data."""

    model_class = BertForTokenClassification
    metric_names = ("f1", "precision", "recall", "accuracy")

    def __init__(self, name: str = "ner", *, labels: Sequence[str] | None = None, tag_column: int = -1) -> None:
        self.name = "ner"
        self.label_names = list(labels) if labels else None
        self.tag_column = tag_column

    def read(self, path: str | Path, *, labelled: bool = True) -> list[Sentence]:
        if _holds_lists(path):  # the Hub's layout: a list of words and a list of tags per row
            return read_token_table(path, labelled=labelled)
        return read_conll(path, tag_column=self.tag_column, labelled=labelled)

    def fit_labels(self, sentences: Sequence[Sentence]) -> None:
        if not self.label_names:
            found = {t for s in sentences for t in s.tags}
            # O first, then by entity type and position: a stable, readable id2label.
            self.label_names = sorted(found, key=lambda t: (t != "O", t[2:], t[0]))

    def model_kwargs(self) -> dict:
        return {"labels": self.label_names}

    def settings(self) -> dict:
        return {"task": self.name, "tag_column": self.tag_column}

    def features(self, sentences: Sequence[Sentence], tokenizer, *, max_seq_length: int,
                 train: bool = False) -> list[Feature]:
        """`[CLS] pieces [SEP]` per sentence; a sentence too long for one window is split between words
        into several features (`extra["words"]` = the word indices each feature covers)."""
        vocab = sorted({w for s in sentences for w in s.words})
        enc = tokenizer.encode(vocab, add_special_tokens=False, truncation=None, max_length=10**9)
        pieces = {w: ids or [tokenizer.unk_id] for w, ids in zip(vocab, enc.input_ids, strict=True)}
        index = {t: i for i, t in enumerate(self.label_names or [])}
        budget = max_seq_length - 2
        features = []
        for n, sentence in enumerate(sentences):
            labels = None
            if sentence.tags is not None and self.label_names:
                labels = []
                for i, tag in enumerate(sentence.tags):
                    if tag not in index:
                        raise DataError(f"{sentence.source}: word {i + 1} has tag {tag!r}, unseen in training "
                                        f"(tags: {self.label_names}); fix the tag or train with examples of it")
                    labels.append(index[tag])
            start = 0
            while start < len(sentence.words):
                ids, targets, firsts, end = [tokenizer.cls_id], [IGNORE_INDEX], [], start
                while end < len(sentence.words) and (len(ids) - 1 + len(pieces[sentence.words[end]]) <= budget
                                                     or end == start):
                    word_ids = pieces[sentence.words[end]][: budget]
                    firsts.append(len(ids))
                    targets += [labels[end] if labels else IGNORE_INDEX] + [IGNORE_INDEX] * (len(word_ids) - 1)
                    ids += word_ids
                    end += 1
                ids.append(tokenizer.sep_id)
                targets.append(IGNORE_INDEX)
                features.append(Feature(ids, [0] * len(ids), targets, n,
                                        {"first_pieces": firsts, "words": (start, end)}))
                start = end
        return features

    def labels(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]:
        width = max(len(f.input_ids) for f in features)
        out = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            out[i, : len(f.label)] = torch.tensor(f.label)
        return {"labels": out}

    def scored_tokens(self, feature: Feature) -> int:
        """How many positions of `feature` take a loss (the first piece of each word)."""
        return sum(label != IGNORE_INDEX for label in feature.label)

    def loss(self, output, labels: dict[str, torch.Tensor], per_batch_tokens: float | None = None) -> torch.Tensor:
        """Cross-entropy over the scored positions: their mean in this batch, or, with `per_batch_tokens`, their
        sum divided by that constant (every token then weighs the same whatever batch it lands in)."""
        logits = output.logits  # [B, T, C]
        loss = F.cross_entropy(logits.flatten(0, 1), labels["labels"].flatten(), ignore_index=IGNORE_INDEX,
                               reduction="mean" if per_batch_tokens is None else "sum")
        return loss if per_batch_tokens is None else loss / per_batch_tokens

    def outputs(self, output, batch) -> list[np.ndarray]:
        lengths = batch["attention_mask"].sum(1).tolist()
        logits = output.logits.float().cpu().numpy()
        return [row[:n] for row, n in zip(logits, lengths, strict=True)]  # B × [T_i, C]

    def word_predictions(self, sentences: Sequence[Sentence], features: Sequence[Feature],
                         outputs: Sequence[np.ndarray]) -> list[list[tuple[str, float]]]:
        """One (tag, probability) per word: the arg-max of the softmax at the word's first piece (BERT §5.3)."""
        predicted: list[list] = [[("", 0.0)] * len(s.words) for s in sentences]
        for feature, logits in zip(features, outputs, strict=True):
            start, _ = feature.extra["words"]
            firsts = logits[feature.extra["first_pieces"]].astype(np.float64)  # [W, C]
            probs = np.exp(firsts - firsts.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            for offset, row in enumerate(probs):
                best = int(row.argmax())
                predicted[feature.example][start + offset] = (self.label_names[best], float(row[best]))
        return predicted

    def word_tags(self, sentences: Sequence[Sentence], features: Sequence[Feature],
                  outputs: Sequence[np.ndarray]) -> list[list[str]]:
        """One predicted tag per word."""
        return [[tag for tag, _ in words] for words in self.word_predictions(sentences, features, outputs)]

    def entities(self, sentences: Sequence[Sentence], features: Sequence[Feature],
                 outputs: Sequence[np.ndarray]) -> list[list[dict]]:
        """Per sentence of `split_words`, its entities {entity, text, start, end, score}: the words' tags grouped
        by conlleval's chunk rules, character spans into the raw text, score = the mean of the words'
        probabilities."""
        found = []
        for sentence, words in zip(sentences, self.word_predictions(sentences, features, outputs), strict=True):
            entities = []
            for first, last, kind in sorted(chunks([tag for tag, _ in words])):
                start, end = sentence.spans[first][0], sentence.spans[last][1]
                score = float(np.mean([p for _, p in words[first : last + 1]]))
                entities.append({"entity": kind, "text": sentence.text[start:end], "start": start, "end": end,
                                 "score": score})
            found.append(entities)
        return found

    def evaluate(self, sentences: Sequence[Sentence], features: Sequence[Feature],
                 outputs: Sequence[np.ndarray]) -> dict:
        return conll_f1([s.tags for s in sentences], self.word_tags(sentences, features, outputs))

    def read_ids(self, path: str | Path, id_column: str) -> list:
        raise OptionError(f"--id-column {id_column}: ner predictions are a CoNLL file (one 'word TAG' per line), "
                          "which has no id column; leave --id-column out")

    def write_predictions(self, path: Path, sentences: Sequence[Sentence], features: Sequence[Feature],
                          outputs: Sequence[np.ndarray], table: PredictionTable) -> None:
        """CoNLL: `word TAG` per line, a blank line between sentences."""
        tags = self.word_tags(sentences, features, outputs)
        lines = ["\n".join(f"{w} {t}" for w, t in zip(s.words, ts, strict=True)) + "\n"
                 for s, ts in zip(sentences, tags, strict=True)]
        write_text_atomic(path, "\n".join(lines))
