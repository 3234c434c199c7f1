"""Pipelines: text in, answers out — fill-mask, embed, classify, ner, qa — on top of `Predictor`.

Each function takes a Predictor (which holds the model and tokenizer) and plain Python inputs and returns
plain Python values (lists and dicts of str/float/int), in input order, ready for JSON.
`load_pipeline(dir)` picks the task from the checkpoint's `architectures` entry.
Shapes: N = real tokens of a batch, H = hidden size, V = vocabulary, C = classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertforge.errors import BertforgeError
from bertforge.heads import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.inference.embed import Pooling, embed_texts
from bertforge.inference.predictor import Predictor, quantize_int8
from bertforge.model import BertModel
from bertforge.options import resolve_device
from bertforge.tokenizer import Encoding

# config.json architecture -> (model class, the pipelines it serves)
TASKS: dict[str, tuple[type, tuple[str, ...]]] = {
    "BertModel": (BertModel, ("embed",)),
    "BertForPreTraining": (BertForPreTraining, ("fill-mask", "embed")),
    "BertForMaskedLM": (BertForMaskedLM, ("fill-mask", "embed")),
    "BertForSequenceClassification": (BertForSequenceClassification, ("classify", "embed")),
    "BertForTokenClassification": (BertForTokenClassification, ("ner", "embed")),
    "BertForQuestionAnswering": (BertForQuestionAnswering, ("qa", "embed")),
}


class PipelineError(BertforgeError, ValueError):
    """An input the pipeline cannot answer (no [MASK], wrong model for the task, ...)."""


@dataclass
class Loaded:
    predictor: Predictor
    architecture: str
    tasks: tuple[str, ...]
    directory: Path


def load_pipeline(directory: str | Path, *, device: str = "auto", int8: bool = False, **predictor_kwargs) -> Loaded:
    """Load a Hugging Face-format model (a folder, `all-minilm-l6-v2` or a Hub id: pretrained.resolve_model)
    as the task model its config names, wrapped in a Predictor.
    `int8` applies dynamic int8 quantisation (CPU only, so `auto` is the CPU then; see predictor.quantize_int8
    for its accuracy cost)."""
    from bertforge.checkpoint import load_model, read_config
    from bertforge.pretrained import resolve_model
    from bertforge.tokenizer import BertTokenizer

    directory = resolve_model(directory)
    architecture = (read_config(directory).get("architectures") or ["BertModel"])[0]
    if architecture not in TASKS:
        raise PipelineError(f"{directory}/config.json: architecture {architecture!r} has no pipeline; "
                            f"supported: {', '.join(TASKS)}")
    model_class, tasks = TASKS[architecture]
    target = resolve_device("cpu" if int8 and device == "auto" else device)
    model = load_model(directory, model_class).to(target)
    if int8:
        if target.type != "cpu":
            raise PipelineError(f"int8 quantisation runs on the CPU only, not on {device}")
        model = quantize_int8(model)
    predictor = Predictor(model, BertTokenizer.from_pretrained(directory), **predictor_kwargs)
    return Loaded(predictor, architecture, tasks, Path(directory))


def _require(predictor: Predictor, cls: type | tuple[type, ...], task: str) -> None:
    if not isinstance(predictor.model, cls):
        raise PipelineError(f"{task} needs a {getattr(cls, '__name__', cls)} checkpoint, "
                            f"this model is a {type(predictor.model).__name__}")


# ----- fill-mask ------------------------------------------------------------------------------------------
@torch.inference_mode()
def fill_mask(predictor: Predictor, texts: Sequence[str], *, top_k: int = 5) -> list[list[list[dict]]]:
    """For every text, for every [MASK] in it (left to right), the top-k tokens with probabilities."""
    _require(predictor, BertForPreTraining, "fill-mask")
    model: BertForPreTraining = predictor.model
    tok = predictor.tokenizer
    enc = predictor.tokenize(texts)
    for i, ids in enumerate(enc.input_ids):
        if tok.mask_id not in ids:
            raise PipelineError(f"text {i} has no [MASK] token (or it was truncated away): {texts[i][:80]!r}")
    results: list = [None] * len(texts)
    embedding = predictor.encoder.embeddings.word_embeddings.weight
    for batch in predictor.run(enc):
        flat_ids = torch.tensor([t for i in batch.indices for t in enc.input_ids[i]], device=embedding.device)
        masked = flat_ids == tok.mask_id  # [N]
        probs = model.mlm(batch.sequence_output[masked], embedding).float().softmax(-1)  # [M, V]
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        rows = batch.rows()[masked].tolist()
        per_text: dict[int, list] = {}
        for row, p, t in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
            per_text.setdefault(row, []).append(
                [{"token": tok.id_to_token(j), "token_id": j, "score": s} for s, j in zip(p, t, strict=True)]
            )
        for row, i in enumerate(batch.indices):
            results[i] = per_text[row]
    return results


# ----- embed ----------------------------------------------------------------------------------------------
def embed(predictor: Predictor, texts: Sequence[str], *, pooling: Pooling = "mean",
          normalize: bool = False) -> np.ndarray:
    """[len(texts), H] float32 sentence vectors (see inference/embed.py for layer selection)."""
    return embed_texts(predictor.encoder, predictor.tokenizer, texts, pooling=pooling, normalize=normalize,
                       max_length=predictor.max_length, predictor=predictor).vectors


# ----- classify -------------------------------------------------------------------------------------------
@torch.inference_mode()
def classify(predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[dict]:
    """{label, score, scores: {label: probability}} per text (pair); regression models give {value}.
    Multi-label models score each label by its own sigmoid, as transformers' pipeline does."""
    _require(predictor, BertForSequenceClassification, "classify")
    model: BertForSequenceClassification = predictor.model
    labels = model.labels or [f"LABEL_{i}" for i in range(model.num_labels)]
    results: list = [None] * len(texts)
    for batch in predictor.run(predictor.tokenize(texts, pairs), first_token_only=True):
        logits = model.classifier(batch.pooled_output).float()  # [B, C]
        for row, i in enumerate(batch.indices):
            if model.num_labels == 1:
                results[i] = {"value": float(logits[row, 0])}
                continue
            multi_label = model.problem_type == "multi_label_classification"  # independent yes/no per label
            probs = (logits[row].sigmoid() if multi_label else logits[row].softmax(-1)).tolist()
            best = int(np.argmax(probs))
            results[i] = {"label": labels[best], "score": probs[best],
                          "scores": dict(zip(labels, probs, strict=True))}
    return results


# ----- ner ------------------------------------------------------------------------------------------------
def _entity_type(label: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'PER' -> ('I', 'PER'); 'O' -> ('O', '')."""
    if label == "O":
        return "O", ""
    if len(label) > 2 and label[1] in "-_" and label[0] in "BIES":
        return label[0], label[2:]
    return "I", label


@torch.inference_mode()
def ner(predictor: Predictor, texts: Sequence[str]) -> list[list[dict]]:
    """Entities per text: {entity, text, start, end, score}; character spans into the original text.

    Each word takes the label of its first sub-token (as in BERT §5.3); consecutive words of one type
    merge into one entity unless a B- (or S-) label starts a new one. score = mean probability of the
    first sub-tokens' labels.
    """
    _require(predictor, BertForTokenClassification, "ner")
    model: BertForTokenClassification = predictor.model
    labels = model.labels or [f"LABEL_{i}" for i in range(model.num_labels)]
    enc = predictor.tokenize(texts)
    results: list = [None] * len(texts)
    for batch in predictor.run(enc):
        probs = model.classifier(batch.sequence_output).float().softmax(-1)  # [N, C]
        for row, p in enumerate(batch.split(probs)):
            i = batch.indices[row]
            results[i] = _merge_words(texts[i], enc.word_ids[i], enc.offsets[i], p, labels)
    return results


def _merge_words(text: str, word_ids: list, offsets: list, probs: torch.Tensor, labels: list[str]) -> list[dict]:
    # One (label, prob, start, end) per word, from its first sub-token; later sub-tokens widen the span.
    words: dict[int, list] = {}
    best_p, best = probs.max(-1)
    for t, w in enumerate(word_ids):
        if w is None:
            continue
        if w not in words:
            words[w] = [labels[int(best[t])], float(best_p[t]), offsets[t][0], offsets[t][1]]
        else:
            words[w][3] = offsets[t][1]
    entities: list[dict] = []
    current: dict | None = None
    for w in sorted(words):
        label, p, start, end = words[w]
        tag, kind = _entity_type(label)
        if tag == "O":
            current = None
            continue
        if current is not None and current["entity"] == kind and tag in "IE":
            current["end"], current["_scores"] = end, current["_scores"] + [p]
        else:
            current = {"entity": kind, "start": start, "end": end, "_scores": [p]}
            entities.append(current)
        if tag in "ES":
            current = None
    for e in entities:
        scores = e.pop("_scores")
        e["score"] = sum(scores) / len(scores)
        e["text"] = text[e["start"] : e["end"]]
    return entities


# ----- qa -------------------------------------------------------------------------------------------------
@dataclass
class _Window:
    example: int
    context_start: int  # index of the first context token inside the window's ids
    offsets: list[tuple[int, int]]  # character spans of the window's context tokens


@torch.inference_mode()
def qa(predictor: Predictor, questions: Sequence[str], contexts: Sequence[str], *, max_length: int = 384,
       stride: int = 128, max_answer_tokens: int = 30) -> list[dict]:
    """{answer, score, start, end} per (question, context): the best span over all windows.

    Contexts longer than the window are covered by overlapping windows (`stride` tokens of overlap,
    as in BERT §4.2's SQuAD set-up); score = softmax(start) · softmax(end) within the window.
    """
    _require(predictor, BertForQuestionAnswering, "qa")
    if len(questions) != len(contexts):
        raise PipelineError(f"got {len(questions)} questions but {len(contexts)} contexts")
    model: BertForQuestionAnswering = predictor.model
    tok = predictor.tokenizer
    max_length = min(max_length, predictor.max_length)
    q_enc = tok.encode(list(questions), add_special_tokens=False, truncation=None, max_length=10**9)
    c_enc = tok.encode(list(contexts), add_special_tokens=False, truncation=None, max_length=10**9)
    ids, types, windows = [], [], []
    for i, (q_ids, c_ids) in enumerate(zip(q_enc.input_ids, c_enc.input_ids, strict=True)):
        q_ids = q_ids[: max_length // 2]  # a question never takes more than half the window
        room = max_length - len(q_ids) - 3  # [CLS] q [SEP] c [SEP]
        step = max(1, room - stride)
        start = 0
        while True:
            piece = c_ids[start : start + room]
            ids.append([tok.cls_id, *q_ids, tok.sep_id, *piece, tok.sep_id])
            types.append([0] * (len(q_ids) + 2) + [1] * (len(piece) + 1))
            windows.append(_Window(i, len(q_ids) + 2, c_enc.offsets[i][start : start + len(piece)]))
            if start + room >= len(c_ids):
                break
            start += step
    enc = Encoding(ids, types, [], [], [], [], [], [])
    best: list[dict] = [{"answer": "", "score": 0.0, "start": 0, "end": 0} for _ in questions]
    for batch in predictor.run(enc):
        logits = model.span(batch.sequence_output).float()  # [N, 2]
        for row, window_logits in enumerate(batch.split(logits)):
            window = windows[batch.indices[row]]
            span = _best_span(window_logits, window, max_answer_tokens)
            if span is not None and span[0] > best[window.example]["score"]:
                score, start, end = span
                best[window.example] = {"answer": contexts[window.example][start:end], "score": score,
                                        "start": start, "end": end}
    return best


def _best_span(logits: torch.Tensor, window: _Window, max_answer_tokens: int) -> tuple[float, int, int] | None:
    """(probability, char start, char end) of the best span inside the window's context tokens."""
    n = len(window.offsets)
    if n == 0:
        return None
    context = slice(window.context_start, window.context_start + n)
    p_start = logits[:, 0].softmax(-1)[context]  # [n] over the whole window, read at context tokens
    p_end = logits[:, 1].softmax(-1)[context]
    joint = p_start[:, None] * p_end[None, :]  # [n, n]: start i, end j
    allowed = torch.ones(n, n, dtype=torch.bool).triu().tril(max_answer_tokens - 1)
    joint = joint.masked_fill(~allowed, -1.0)
    flat = int(joint.argmax())
    i, j = divmod(flat, n)
    return float(joint[i, j]), window.offsets[i][0], window.offsets[j][1]
