"""Pre-training examples (BERT §3.1, Appendix A.1): `[CLS] A [SEP] B [SEP]` from whole sentences.

An example is five integers into a shard's token array — (a_start, a_end, b_start, b_end, nsp_label) —
so a shard's whole epoch of examples costs a few MB whatever the corpus size. Packed rows (MLM only,
`ExampleSettings.packed`) are (start, end) pairs of the document windows that share one row. Examples are rebuilt
for every epoch from a seed (a fresh pairing and a fresh short-sequence draw each epoch), which also
makes the data position of a run just (epoch, shard, example) numbers: resuming regenerates them.

NSP label convention of the released checkpoints: 0 = IsNext, 1 = NotNext.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bertforge.data.shards import Shard
from bertforge.errors import OptionError

IS_NEXT, NOT_NEXT = 0, 1


@dataclass(frozen=True)
class ExampleSettings:
    """How examples are cut. max_seq_length counts [CLS] and [SEP]s; short_seq_prob is BERT's 0.1
    (Appendix A.1 via create_pretraining_data.py: shorter sequences so the model sees them too)."""

    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    nsp: bool = True  # False: one segment `[CLS] A [SEP]` per example (MLM only, RoBERTa "FULL-SENTENCES")
    packed: bool = False  # MLM only: rows filled to max_seq_length with document windows (build_packed_rows)

    def __post_init__(self) -> None:
        if self.packed and self.nsp:
            raise OptionError("packed rows hold windows of several documents, so they have no sentence pairs: "
                             "packing needs the mlm objective (no NSP)")
        if self.max_seq_length < 8:
            raise OptionError(f"max_seq_length {self.max_seq_length} is too short; use at least 8")


def build_examples(shard: Shard, rng: random.Random, settings: ExampleSettings) -> np.ndarray:
    """All examples of one pass over `shard`: [E, 5] int64 (a_start, a_end, b_start, b_end, nsp_label),
    or, packed, [E, 2K] rows of (start, end) windows (see build_packed_rows).

    B is empty (b_start == b_end) when settings.nsp is False.
    """
    if settings.packed:
        return build_packed_rows(shard, rng, settings.max_seq_length)
    max_tokens = settings.max_seq_length - (3 if settings.nsp else 2)
    sent = np.asarray(shard.sentences)
    docs = np.asarray(shard.documents)
    out: list[tuple[int, int, int, int, int]] = []
    for d in range(shard.num_documents):
        first, last = int(docs[d]), int(docs[d + 1])  # sentences [first, last)
        target = max_tokens
        if rng.random() < settings.short_seq_prob:
            target = rng.randint(2, max_tokens)
        chunk_start, s = first, first
        while s < last:
            # Collect whole sentences until the target length or the end of the document.
            if int(sent[s + 1] - sent[chunk_start]) < target and s < last - 1:
                s += 1
                continue
            chunk_end = s + 1  # sentences [chunk_start, chunk_end)
            if not settings.nsp:
                out.append(_trim(int(sent[chunk_start]), int(sent[chunk_end]), 0, 0, 0, max_tokens, rng))
            else:
                is_next = rng.random() < 0.5
                if is_next and chunk_end - chunk_start == 1 and chunk_end < last:
                    chunk_end += 1  # IsNext needs a second sentence: take the following one
                    s += 1
                if chunk_end - chunk_start == 1:
                    is_next = False  # a lone last sentence can only be paired with a random segment
                a_end = chunk_start + 1 if chunk_end - chunk_start < 2 else rng.randint(chunk_start + 1, chunk_end - 1)
                a = (int(sent[chunk_start]), int(sent[a_end]))
                if is_next:
                    b = (int(sent[a_end]), int(sent[chunk_end]))
                else:
                    b = _random_segment(shard, d, target - (a[1] - a[0]), rng)
                    s = a_end - 1  # the unused sentences of the chunk start the next example
                if b is not None:
                    out.append(_trim(*a, *b, IS_NEXT if is_next else NOT_NEXT, max_tokens, rng))
            s += 1
            chunk_start = s
            target = max_tokens if rng.random() >= settings.short_seq_prob else rng.randint(2, max_tokens)
    return np.asarray(out, dtype=np.int64).reshape(-1, 5)


def document_windows(shard: Shard, rng: random.Random, max_tokens: int) -> np.ndarray:
    """[W, 2] (start, end) token windows of at most `max_tokens`, each inside one document.

    A document is cut every `max_tokens` tokens, from a random shift drawn per document and pass, so the
    cuts (which ignore sentence ends, as Cramming's and RoBERTa's streams do) move from epoch to epoch.
    """
    first_tokens = np.asarray(shard.sentences)[np.asarray(shard.documents)]  # [D + 1] token offset of each document
    windows = []
    for start, end in zip(first_tokens[:-1].tolist(), first_tokens[1:].tolist(), strict=True):
        if end - start > max_tokens:
            shift = rng.randrange(max_tokens)
            cuts = [*range(start + shift, end, max_tokens), end]
            if shift:
                cuts.insert(0, start)
        else:
            cuts = [start, end]
        windows.extend((a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a)
    return np.asarray(windows, dtype=np.int64).reshape(-1, 2)


def build_packed_rows(shard: Shard, rng: random.Random, max_seq_length: int) -> np.ndarray:
    """Rows of exactly-or-nearly `max_seq_length` tokens, no padding to speak of (Cramming §4.1, ModernBERT).

    Each window becomes `[CLS] window [SEP]`; a full window fills a row alone, and shorter ones (short
    documents, document ends) share rows, placed largest first into the fullest row with room (best-fit
    decreasing). Rows are [R, 2K] int64: K = max_seq_length // 3 (start, end) pairs, unused pairs -1.
    Attention never crosses a window's edges (`PreTrainingBatch.sequence_ids`), so a row computes what its
    windows would compute as separate sequences.
    """
    windows = document_windows(shard, rng, max_seq_length - 2)
    lengths = windows[:, 1] - windows[:, 0] + 2  # with [CLS] and [SEP]
    width = max_seq_length // 3
    tie_break = np.asarray([rng.random() for _ in range(len(windows))])
    rows: list[list[int]] = []
    rows_with_room: list[list[int]] = [[] for _ in range(max_seq_length + 1)]  # room left -> row indices
    for w in np.lexsort((tie_break, -lengths)).tolist():
        need = int(lengths[w])
        room = next((r for r in range(need, max_seq_length + 1) if rows_with_room[r]), None)
        if room is None:
            rows.append([])
            row, room = len(rows) - 1, max_seq_length
        else:
            row = rows_with_room[room].pop()
        rows[row].append(w)
        rows_with_room[room - need].append(row)
    out = np.full((len(rows), 2 * width), -1, dtype=np.int64)
    for r, members in enumerate(rows):
        out[r, :2 * len(members)] = windows[members].reshape(-1)
    return out


def _random_segment(shard: Shard, doc: int, target: int, rng: random.Random) -> tuple[int, int] | None:
    """Sentences from a random other document, from a random start, until `target` tokens."""
    if shard.num_documents < 2:
        return None
    other = rng.randrange(shard.num_documents - 1)
    other += other >= doc  # uniform over the other documents
    first, last = int(shard.documents[other]), int(shard.documents[other + 1])
    start = rng.randrange(first, last)
    end = start + 1
    while end < last and int(shard.sentences[end] - shard.sentences[start]) < target:
        end += 1
    return int(shard.sentences[start]), int(shard.sentences[end])


def _trim(a_start: int, a_end: int, b_start: int, b_end: int, label: int, max_tokens: int,
          rng: random.Random) -> tuple[int, int, int, int, int]:
    """Shorten the longer segment one token at a time, from the front or the back at random
    (create_pretraining_data.py truncate_seq_pair), until both fit."""
    while (a_end - a_start) + (b_end - b_start) > max_tokens:
        if (a_end - a_start) > (b_end - b_start):
            if rng.random() < 0.5:
                a_start += 1
            else:
                a_end -= 1
        elif rng.random() < 0.5:
            b_start += 1
        else:
            b_end -= 1
    return a_start, a_end, b_start, b_end, label


@dataclass
class DataPosition:
    """Where a run is in its data: resuming rebuilds the same examples and skips to here."""

    epoch: int = 0
    shard: int = 0  # index into this epoch's shard order
    example: int = 0  # index into that shard's shuffled examples


class ExampleStream:
    """Endless examples over the shards of one split: each epoch shuffles the shard order, rebuilds each
    shard's examples with a seed of (seed, epoch, shard) and shuffles them."""

    def __init__(self, shards: Sequence[Shard], settings: ExampleSettings, *, seed: int,
                 position: DataPosition | None = None) -> None:
        if not shards:
            raise ValueError("no shards to read examples from")
        self.shards, self.settings, self.seed = list(shards), settings, seed
        self.position = position or DataPosition()
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        return order

    def _examples(self, epoch: int, shard_pos: int) -> np.ndarray:
        key = (epoch, shard_pos)
        if self._cache is None or self._cache[0] != key:
            index = self._order(epoch)[shard_pos]
            rng = random.Random(f"{self.seed}/{epoch}/{index}")
            examples = build_examples(self.shards[index], rng, self.settings)
            examples = examples[np.random.default_rng([self.seed, epoch, index]).permutation(len(examples))]
            self._cache = (key, examples)
        return self._cache[1]

    def take(self, count: int) -> list[tuple[Shard, np.ndarray]]:
        """The next `count` examples as (shard, [5] record) pairs; the position moves past them."""
        out: list[tuple[Shard, np.ndarray]] = []
        pos = self.position
        while len(out) < count:
            examples = self._examples(pos.epoch, pos.shard)
            shard = self.shards[self._order(pos.epoch)[pos.shard]]
            taken = examples[pos.example:pos.example + count - len(out)]
            out.extend((shard, record) for record in taken)
            pos.example += len(taken)
            if pos.example >= len(examples):
                pos.example, pos.shard = 0, pos.shard + 1
                if pos.shard == len(self.shards):
                    pos.shard, pos.epoch = 0, pos.epoch + 1
                if not len(examples) and pos.shard == 0 and not out:
                    raise ValueError("the shards produce no examples (documents too short?)")
        return out


@dataclass
class PreTrainingBatch:
    """A padded batch before masking. Shapes: B = batch, T = longest example (rounded up to 8)."""

    input_ids: torch.Tensor  # [B, T] int64
    token_type_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T] 1 = token, 0 = padding
    special_tokens_mask: torch.Tensor  # [B, T] bool: [CLS], [SEP], padding (never masked)
    nsp_labels: torch.Tensor  # [B] 0 = IsNext, 1 = NotNext
    # Packed rows only: which window each token belongs to (1, 2, …; 0 = padding) and its position
    # inside that window, so every window is encoded as if it were a sequence of its own.
    sequence_ids: torch.Tensor | None = None  # [B, T]
    position_ids: torch.Tensor | None = None  # [B, T]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> PreTrainingBatch:
        parts = (getattr(self, f) for f in self.__dataclass_fields__)
        return PreTrainingBatch(*(p[start:stop] if p is not None else None for p in parts))

    def model_attention_mask(self) -> torch.Tensor:
        """What the encoder's attention sees: [B, T] padding mask, or for rows holding several windows
        [B, T, T] bool, True where query and key are in the same window (padding attends to padding, so no
        query row is empty)."""
        if self.sequence_ids is None or int(self.sequence_ids.max()) <= 1:
            return self.attention_mask
        return self.sequence_ids[:, :, None] == self.sequence_ids[:, None, :]


def pad_rows(rows: list[np.ndarray], fill: int, pad_to_multiple: int) -> torch.Tensor:
    """Rows of different lengths -> [B, W] int64, W the longest rounded up to `pad_to_multiple`."""
    width = -(-max(len(r) for r in rows) // pad_to_multiple) * pad_to_multiple
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.from_numpy(np.asarray(row, dtype=np.int64))
    return out


def collate(examples: list[tuple[Shard, np.ndarray]], *, cls_id: int, sep_id: int, pad_id: int,
            pad_to_multiple: int = 8) -> PreTrainingBatch:
    """Assemble `[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]` when B is empty) with segment ids 0…0 1…1."""
    rows, types = [], []
    for shard, (a0, a1, b0, b1, _) in examples:
        a = np.asarray(shard.tokens[a0:a1], dtype=np.int64)
        ids = [[cls_id], a, [sep_id]]
        type_ids = [np.zeros(len(a) + 2, dtype=np.int64)]
        if b1 > b0:
            b = np.asarray(shard.tokens[b0:b1], dtype=np.int64)
            ids += [b, [sep_id]]
            type_ids.append(np.ones(len(b) + 1, dtype=np.int64))
        rows.append(np.concatenate(ids))
        types.append(np.concatenate(type_ids))
    input_ids = pad_rows(rows, pad_id, pad_to_multiple)
    token_type_ids = pad_rows(types, 0, pad_to_multiple)
    attention_mask = pad_rows([np.ones(len(r), dtype=np.int64) for r in rows], 0, pad_to_multiple)
    special = (input_ids == cls_id) | (input_ids == sep_id) | (attention_mask == 0)
    labels = torch.tensor([int(record[4]) for _, record in examples], dtype=torch.long)
    return PreTrainingBatch(input_ids, token_type_ids, attention_mask, special, labels)


def collate_packed(rows: list[tuple[Shard, np.ndarray]], *, cls_id: int, sep_id: int, pad_id: int,
                   pad_to_multiple: int = 8) -> PreTrainingBatch:
    """Packed rows -> `[CLS] w1 [SEP] [CLS] w2 [SEP] …` with per-window sequence ids and positions."""
    ids_rows, seq_rows, pos_rows = [], [], []
    for shard, record in rows:
        pairs = record.reshape(-1, 2)
        ids, seqs, pos = [], [], []
        for k, (start, end) in enumerate(pairs[pairs[:, 0] >= 0].tolist(), start=1):
            window = np.concatenate([[cls_id], np.asarray(shard.tokens[start:end], dtype=np.int64), [sep_id]])
            ids.append(window)
            seqs.append(np.full(len(window), k, dtype=np.int64))
            pos.append(np.arange(len(window), dtype=np.int64))
        ids_rows.append(np.concatenate(ids))
        seq_rows.append(np.concatenate(seqs))
        pos_rows.append(np.concatenate(pos))
    input_ids = pad_rows(ids_rows, pad_id, pad_to_multiple)
    sequence_ids = pad_rows(seq_rows, 0, pad_to_multiple)
    position_ids = pad_rows(pos_rows, 0, pad_to_multiple)
    attention_mask = (sequence_ids > 0).long()
    special = (input_ids == cls_id) | (input_ids == sep_id) | (attention_mask == 0)
    return PreTrainingBatch(input_ids, torch.zeros_like(input_ids), attention_mask, special,
                            torch.zeros(len(rows), dtype=torch.long), sequence_ids, position_ids)


def document_of(shard: Shard, token: int) -> int:
    """Index of the document holding token offset `token` (for tests and inspection)."""
    sentence = int(np.searchsorted(shard.sentences, token, side="right")) - 1
    return int(np.searchsorted(shard.documents, sentence, side="right")) - 1
