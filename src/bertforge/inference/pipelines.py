"""Pipelines: text in, answers out — fill-mask, embed, classify, ner, qa — on top of `Predictor`.

Each function takes a Predictor (which holds the model and tokenizer) and plain Python inputs and returns
plain Python values (lists and dicts of str/float/int), in input order, ready for JSON.
`load_pipeline(dir)` picks the task from the checkpoint's `architectures` entry.
What an answer means lives in tasks/: the task family turns texts into features and the head's logits into
answers, exactly as `evaluate` and `predict` do; here the Predictor only runs the encoder fast and
`head_logits` applies the model's own head.
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
from bertforge.inference.predictor import Predictor
from bertforge.inference.sentence import SentenceConfig, read_sentence_config
from bertforge.model import BertModel
from bertforge.precision import InferencePrecision, inference_device
from bertforge.tasks.base import Feature
from bertforge.tasks.classification import LongText, TextExample
from bertforge.tasks.masked_lm import top_tokens
from bertforge.tasks.ner import split_words
from bertforge.tasks.qa import DEFAULT_MAX_LENGTH, examples_from_pairs
from bertforge.tasks.registry import family_for, saved_task_settings, task_max_length
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
    sentence: SentenceConfig = SentenceConfig()  # the folder's embedding defaults (modules.json)


def load_pipeline(directory: str | Path, *, device: str = "auto", precision: InferencePrecision = "fp32",
                  **predictor_kwargs) -> Loaded:
    """Load a Hugging Face-format model (a folder, `all-minilm-l6-v2` or a Hub id: pretrained.resolve_model)
    as the task model its config names, wrapped in a Predictor that runs in `precision` (bertforge/precision.py;
    int8 is dynamic quantisation on the CPU, activations smoothed first, see inference/int8.py for its accuracy
    cost). Texts are cut
    at the folder's sentence-transformers max_seq_length when it has one, as sentence-transformers cuts them;
    a fine-tuned model's classify, ner and qa cut them at its fine-tuning max_seq_length (`saved_task_settings`).
    `auto` is the CPU for int8, which runs there only."""
    from bertforge.checkpoint import load_model, read_config
    from bertforge.pretrained import resolve_model
    from bertforge.tokenizer import BertTokenizer

    directory = resolve_model(directory)
    architecture = (read_config(directory).get("architectures") or ["BertModel"])[0]
    if architecture not in TASKS:
        raise PipelineError(f"{directory}/config.json: architecture {architecture!r} has no pipeline; "
                            f"supported: {', '.join(TASKS)}")
    model_class, tasks = TASKS[architecture]
    sentence = read_sentence_config(directory)
    predictor_kwargs.setdefault("max_length", sentence.max_length)
    predictor_kwargs.setdefault("task_settings", saved_task_settings(directory))
    model = load_model(directory, model_class).to(inference_device(device, precision))
    predictor = Predictor(model, BertTokenizer.from_pretrained(directory), precision=precision, **predictor_kwargs)
    return Loaded(predictor, architecture, tasks, Path(directory), sentence)


def _require(predictor: Predictor, cls: type | tuple[type, ...], task: str) -> None:
    if not isinstance(predictor.model, cls):
        raise PipelineError(f"{task} needs a {getattr(cls, '__name__', cls)} checkpoint, "
                            f"this model is a {type(predictor.model).__name__}")


def _max_seq_length(predictor: Predictor, max_length: int | None, default: int) -> int:
    """Tokens per feature of a task pipeline: `max_length` if given, else the model's fine-tuning max_seq_length
    (`predictor.task_settings`), else `default`; never more than the Predictor's own limit."""
    return min(task_max_length(predictor.task_settings, max_length, default=default), predictor.max_length)


@torch.inference_mode()
def _head_outputs(predictor: Predictor, features: Sequence[Feature], *, pooled: bool = False) -> list[np.ndarray]:
    """The model's head logits per feature, in feature order, in the layout the task families decode: [C] from
    the pooled [CLS] when `pooled`, else [T_i, C] over the feature's tokens."""
    enc = Encoding([f.input_ids for f in features], [f.token_type_ids for f in features], [], [], [], [], [], [])
    outputs: list = [None] * len(features)
    for batch in predictor.run(enc, first_token_only=pooled):
        hidden = batch.pooled_output if pooled else batch.sequence_output  # [B, H] or [N, H]
        logits = predictor.model.head_logits(hidden).float().cpu()
        rows = list(logits) if pooled else batch.split(logits)
        for row, i in zip(rows, batch.indices, strict=True):
            outputs[i] = row.numpy()
    return outputs


# ----- fill-mask ------------------------------------------------------------------------------------------
@torch.inference_mode()
def fill_mask(predictor: Predictor, texts: Sequence[str], *, top_k: int = 5) -> list[list[list[dict]]]:
    """For every text, for every [MASK] in it (left to right), the top-k tokens with probabilities."""
    _require(predictor, BertForPreTraining, "fill-mask")
    tok = predictor.tokenizer
    enc = predictor.tokenize(texts)
    for i, ids in enumerate(enc.input_ids):
        if tok.mask_id not in ids:
            raise PipelineError(f"text {i} has no [MASK] token (or it was truncated away): {texts[i][:80]!r}")
    results: list = [None] * len(texts)
    for batch in predictor.run(enc):
        flat_ids = torch.tensor([t for i in batch.indices for t in enc.input_ids[i]], device=batch.rows().device)
        masked = flat_ids == tok.mask_id  # [N]
        predicted = top_tokens(predictor.model.head_logits(batch.sequence_output[masked]), tok, top_k=top_k)
        per_text: dict[int, list] = {}
        for row, top in zip(batch.rows()[masked].tolist(), predicted, strict=True):
            per_text.setdefault(row, []).append(top)
        for row, i in enumerate(batch.indices):
            results[i] = per_text[row]
    return results


# ----- embed ----------------------------------------------------------------------------------------------
def embed(predictor: Predictor, texts: Sequence[str] | Sequence[Sequence[int]], *, pooling: Pooling = "mean",
          normalize: bool = False) -> np.ndarray:
    """[len(texts), H] float32 sentence vectors of texts (or token-id lists; see embed.encode_inputs). A model
    folder's own pooling and normalisation are in `Loaded.sentence`; inference/embed.py selects layers."""
    return embed_texts(predictor.encoder, predictor.tokenizer, texts, pooling=pooling, normalize=normalize,
                       max_length=predictor.max_length, predictor=predictor).vectors


# ----- classify -------------------------------------------------------------------------------------------
def classify(predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
             max_length: int | None = None, long_text: LongText | None = None,
             stride: int | None = None) -> list[dict]:
    """{label, score, scores: {label: probability}} per text (pair); regression models give {value}.
    Multi-label models score each label by its own sigmoid, as transformers' pipeline does
    (tasks/classification.py: `SequenceClassification.answers`). Texts are cut to `max_length` tokens
    (`long_text` truncate) or read in windows starting every `stride` tokens whose logits are averaged
    (sliding_window), as `predict` reads them. Options left at None are those the model was fine-tuned with
    (`predictor.task_settings`), else the model's limit, truncate and half a window."""
    _require(predictor, BertForSequenceClassification, "classify")
    task = family_for(predictor.model, predictor.task_settings, long_text=long_text, doc_stride=stride)
    if pairs is not None and task.long_text == "sliding_window":
        raise PipelineError("text pairs: sliding windows read single texts; classify pairs with long_text='truncate'")
    examples = [TextExample(t, p) for t, p in zip(texts, pairs if pairs is not None else [None] * len(texts),
                                                  strict=True)]
    length = _max_seq_length(predictor, max_length, predictor.max_length)
    features = task.features(examples, predictor.tokenizer, max_seq_length=length)
    return task.answers(examples, features, _head_outputs(predictor, features, pooled=True))


# ----- ner ------------------------------------------------------------------------------------------------
def ner(predictor: Predictor, texts: Sequence[str], *, max_length: int | None = None) -> list[list[dict]]:
    """Entities per text: {entity, text, start, end, score}; character spans into the original text.

    Each word takes the label of its first sub-token (BERT §5.3); words group into entities by conlleval's
    rules (a B- or S- label starts a new one); score = the mean probability of the words' labels
    (tasks/ner.py: `TokenClassification.entities`). A text longer than `max_length` tokens (default: the
    length the model was fine-tuned with, else the model's limit) is split between words into several windows.
    """
    _require(predictor, BertForTokenClassification, "ner")
    task = family_for(predictor.model, predictor.task_settings)
    sentences = split_words(texts, predictor.tokenizer)
    length = _max_seq_length(predictor, max_length, predictor.max_length)
    features = task.features(sentences, predictor.tokenizer, max_seq_length=length)
    return task.entities(sentences, features, _head_outputs(predictor, features))


# ----- qa -------------------------------------------------------------------------------------------------
def qa(predictor: Predictor, questions: Sequence[str], contexts: Sequence[str], *, max_length: int | None = None,
       stride: int | None = None, max_answer_length: int | None = None) -> list[dict]:
    """{answer, score, start, end} per (question, context): the best span over all windows.

    SQuAD decoding as `evaluate` does it (tasks/qa.py): contexts longer than one window of `max_length`
    tokens are covered by windows starting every `stride` tokens (finetune's --stride: the step, not
    the overlap); spans are ranked by start + end logit over the n best, each token read in the window where
    it has the most context; score = the answer's probability among the n best spans.
    Options left at None are those the model was fine-tuned with (`predictor.task_settings`, which
    `load_pipeline` reads from its folder), else 384 tokens, a stride of 128 and answers of 30 tokens at most.
    """
    _require(predictor, BertForQuestionAnswering, "qa")
    if len(questions) != len(contexts):
        raise PipelineError(f"got {len(questions)} questions but {len(contexts)} contexts")
    saved = predictor.task_settings
    task = family_for(predictor.model, saved, doc_stride=stride, max_answer_length=max_answer_length)
    examples = examples_from_pairs(questions, contexts)
    window = _max_seq_length(predictor, max_length, DEFAULT_MAX_LENGTH)
    features = task.features(examples, predictor.tokenizer, max_seq_length=window)
    return task.answers(examples, features, _head_outputs(predictor, features))
