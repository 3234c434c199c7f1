"""Contextual vectors per token: what the encoder gives every WordPiece of a text, before any pooling.

The same word gets a different vector in each context — "bank" of a river and "bank" of an account —
which is what makes them contextual (BERT §1, unlike a word2vec table). `word_vector` averages the pieces
of one word; `word_similarity` shows the effect as cosines.
Shapes: T = tokens of one text (with [CLS] and [SEP]), H = hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertforge.errors import OptionError
from bertforge.files import write_atomic
from bertforge.inference.embed import check_vectors_output
from bertforge.model import BertModel
from bertforge.precision import InferencePrecision
from bertforge.tokenizer import BertTokenizer


@dataclass
class TokenVectors:
    """Per text: its WordPiece tokens, their [T, H] vectors, and per token the word it belongs to."""

    texts: list[str]
    tokens: list[list[str]]
    vectors: list[np.ndarray]  # per text [T, H] float32
    word_ids: list[list[int | None]]  # None for [CLS] and [SEP]
    offsets: list[list[tuple[int, int]]]  # character span of each token in its text

    def word_vector(self, text: int, word: str, occurrence: int = 0) -> np.ndarray:
        """[H]: the mean of the pieces of `word` (case-insensitive; its `occurrence`-th time) in text `text`."""
        spans = self._words(text).items()
        found = [w for w, (start, end) in spans if self.texts[text][start:end].lower() == word.lower()]
        if len(found) <= occurrence:
            raise OptionError(f"{word!r} occurs {len(found)} time(s) in text {text} ({self.texts[text]!r}); "
                              f"the words are {sorted(set(self.words(text)))}")
        pieces = [i for i, w in enumerate(self.word_ids[text]) if w == found[occurrence]]
        return self.vectors[text][pieces].mean(0)

    def words(self, text: int) -> list[str]:
        return [self.texts[text][start:end] for start, end in self._words(text).values()]

    def _words(self, text: int) -> dict[int, tuple[int, int]]:
        spans: dict[int, tuple[int, int]] = {}
        for word, (start, end) in zip(self.word_ids[text], self.offsets[text], strict=True):
            if word is not None:
                first = spans.get(word, (start, end))
                spans[word] = (min(first[0], start), max(first[1], end))
        return spans


@torch.inference_mode()
def token_vectors(model: BertModel, tokenizer: BertTokenizer, texts: Sequence[str], *, layer: int = -1,
                  max_length: int | None = None, batch_size: int = 32,
                  precision: InferencePrecision = "fp32") -> TokenVectors:
    """The vectors of every token of every text from hidden state `layer` (0 = embeddings, -1 = last), computed
    in `precision` (bertforge/precision.py: the encoder in bf16, under fp16 autocast, or int8; vectors are float32)."""
    from bertforge.inference.predictor import Predictor

    n_states = model.config.num_layers + 1
    if not -n_states <= layer < n_states:
        raise OptionError(f"--layer {layer}: out of range; this model has hidden states 0..{n_states - 1} "
                          f"(or -1..-{n_states})")
    max_length = min(max_length or tokenizer.model_max_length, model.config.max_position_embeddings)
    predictor = Predictor(model, tokenizer, mode="padded", max_batch=batch_size, max_tokens=batch_size * max_length,
                          precision=precision)
    enc = tokenizer.encode(list(texts), max_length=max_length)
    vectors: list[np.ndarray | None] = [None] * len(texts)
    for batch in predictor.run(enc, output_hidden_states=layer != -1):
        states = batch.sequence_output if layer == -1 else batch.hidden_states[layer]
        for index, rows in zip(batch.indices, batch.split(states), strict=True):
            vectors[index] = rows.float().cpu().numpy()
    tokens = [[tokenizer.id_to_token(i) for i in ids] for ids in enc.input_ids]
    return TokenVectors(list(texts), tokens, vectors, enc.word_ids, enc.offsets)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def word_similarity(vectors: TokenVectors, word: str) -> np.ndarray:
    """[N, N] cosine between the vectors of `word` in each of the N texts (its first occurrence in each)."""
    found = [vectors.word_vector(i, word) for i in range(len(vectors.texts))]
    return np.array([[cosine(a, b) for b in found] for a in found])


def save_token_vectors(result: TokenVectors, output: Path) -> Path:
    """An .npz: `vectors` [all tokens, H] back to back, `offsets` [N + 1] where each text starts, `tokens`."""
    check_vectors_output(output, per_token=True)
    lengths = [len(t) for t in result.tokens]

    def save(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, vectors=np.concatenate(result.vectors) if result.vectors else np.zeros((0, 0)),
                     offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     tokens=np.array([t for text in result.tokens for t in text]))

    write_atomic(output, save)
    return Path(output)
