"""Tokenized corpora on disk: `bertforge prepare` turns text into memory-mapped shards, once.

Layout of a prepared folder:

    meta.json            what was tokenized, with which vocabulary (written last: its presence = complete)
    tokenizer/           the vocabulary the ids refer to (vocab.txt, tokenizer.json)
    train/00000.tokens.npy     all token ids of the shard's sentences, back to back (uint16 or int32)
    train/00000.sentences.npy  [S + 1] int64 offsets into tokens: sentence s = tokens[o[s]:o[s+1]]
    train/00000.documents.npy  [D + 1] int64 offsets into sentences: document d = sentences o[d]…o[d+1]
    heldout/00000.*            the same for every `heldout_every`-th document (evaluation)

Training maps these with `np.load(mmap_mode="r")`, so a corpus larger than memory streams from disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from bertforge.data.corpus import corpus_files, iter_documents
from bertforge.errors import DataError
from bertforge.files import (
    check_output_dir,
    is_inside,
    move_into_place,
    remove_stale_temporaries,
    temporary_sibling,
    write_atomic,
    write_text_atomic,
)
from bertforge.tokenizer import BertTokenizer

FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
# What `prepare` writes into its folder; meta.json, last, marks a complete corpus.
PREPARED = ("tokenizer", *SPLITS, "meta.json")


@dataclass
class Shard:
    """One shard, memory-mapped. Sentence s of document d: tokens[sentences[s]:sentences[s + 1]]."""

    tokens: np.ndarray  # [N] token ids
    sentences: np.ndarray  # [S + 1] token offsets
    documents: np.ndarray  # [D + 1] sentence offsets
    name: str = ""

    @property
    def num_documents(self) -> int:
        return len(self.documents) - 1

    @classmethod
    def load(cls, prefix: Path) -> Shard:
        parts = [np.load(f"{prefix}.{part}.npy", mmap_mode="r") for part in ("tokens", "sentences", "documents")]
        return cls(*parts, name=str(prefix))


@dataclass
class PreparedCorpus:
    """A folder written by `prepare`: its shards per split, the tokenizer and the metadata."""

    directory: Path
    meta: dict

    @classmethod
    def open(cls, directory: str | Path) -> PreparedCorpus:
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise DataError(
                f"{meta_path}: not a prepared corpus (or preparation did not finish); "
                f"run `bertforge prepare --files ... --output-dir {directory}`"
            )
        return cls(directory, json.loads(meta_path.read_text(encoding="utf-8")))

    def tokenizer(self) -> BertTokenizer:
        return BertTokenizer.from_pretrained(self.directory / "tokenizer")

    def shard_paths(self, split: str) -> list[Path]:
        return [self.directory / split / name for name in self.meta["shards"][split]]

    def shards(self, split: str) -> Iterator[Shard]:
        for prefix in self.shard_paths(split):
            yield Shard.load(prefix)


def fingerprint(files: Sequence[Path], tokenizer: BertTokenizer, settings: dict) -> str:
    """Changes when any input file, the vocabulary or a setting changes (path, size, mtime)."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(tokenizer.backend.to_str().encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


class _ShardWriter:
    """Accumulates tokenized documents of one split and writes a shard every `shard_tokens` tokens."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.names: list[str] = []
        self.counts = {"documents": 0, "sentences": 0, "tokens": 0}
        self._reset()

    def _reset(self) -> None:
        self.ids: list[list[int]] = []
        self.doc_sizes: list[int] = []
        self.size = 0

    def add(self, document: list[list[int]]) -> None:
        self.ids.extend(document)
        self.doc_sizes.append(len(document))
        self.size += sum(len(s) for s in document)
        if self.size >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.doc_sizes:
            return
        name = f"{len(self.names):05d}"
        lengths = np.fromiter((len(s) for s in self.ids), dtype=np.int64, count=len(self.ids))
        arrays = {
            "tokens": np.fromiter((t for s in self.ids for t in s), dtype=self.dtype, count=int(lengths.sum())),
            "sentences": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "documents": np.concatenate([[0], np.cumsum(self.doc_sizes)]).astype(np.int64),
        }
        for part, array in arrays.items():
            write_atomic(self.directory / f"{name}.{part}.npy", lambda tmp, a=array: _save_npy(tmp, a))
        self.names.append(name)
        self.counts["documents"] += len(self.doc_sizes)
        self.counts["sentences"] += len(self.ids)
        self.counts["tokens"] += int(lengths.sum())
        self._reset()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)


def prepare_corpus(files: Sequence[str | Path], output_dir: str | Path, tokenizer: BertTokenizer, *,
                   heldout_every: int = 100, shard_tokens: int = 1 << 23, max_documents: int | None = None,
                   batch_documents: int = 256, progress: bool = True) -> PreparedCorpus:
    """Tokenize `files` into shards under `output_dir`; skipped when the same input was prepared already.

    Every `heldout_every`-th document goes to the held-out split (0 = none). Sentences are tokenized in
    batches by the `tokenizers` library, which spreads each batch over all cores. The corpus is built in a
    temporary folder beside `output_dir` and moved in when complete: a bad input (a damaged .gz, bytes that
    are not UTF-8) or a kill leaves an earlier corpus in `output_dir` as it was.
    """
    files = corpus_files(files)
    output_dir = check_output_dir(output_dir)
    settings = {"heldout_every": heldout_every, "shard_tokens": shard_tokens, "max_documents": max_documents,
                "format": FORMAT_VERSION}
    key = fingerprint(files, tokenizer, settings)
    meta_path = output_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")).get("fingerprint") == key:
        print(f"{output_dir}: already prepared from the same input, skipping")
        return PreparedCorpus.open(output_dir)
    for path in files:
        for name in PREPARED:
            if is_inside(path, output_dir / name):
                raise DataError(f"{path}: this input lies inside {output_dir / name}, which preparing replaces; "
                                "move it or choose another --output-dir")
    remove_stale_temporaries(output_dir.parent, name=output_dir.name)
    work = temporary_sibling(output_dir)
    try:
        meta = _prepare_into(work, files, tokenizer, key, settings, max_documents=max_documents,
                             batch_documents=batch_documents, progress=progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    move_into_place(work, output_dir, PREPARED)
    return PreparedCorpus(output_dir, meta)


def _prepare_into(output_dir: Path, files: list[Path], tokenizer: BertTokenizer, key: str, settings: dict, *,
                  max_documents: int | None, batch_documents: int, progress: bool) -> dict:
    """Tokenize `files` into a new, empty `output_dir`; returns the metadata written as meta.json."""
    heldout_every, shard_tokens = settings["heldout_every"], settings["shard_tokens"]
    tokenizer.save_pretrained(output_dir / "tokenizer")

    # A private copy of the backend without truncation: ids of whole sentences, no special tokens.
    backend = Tokenizer.from_str(tokenizer.backend.to_str())
    backend.no_truncation()
    backend.no_padding()
    dtype = np.dtype(np.uint16) if tokenizer.vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.int32)
    writers = {split: _ShardWriter(output_dir / split, dtype, shard_tokens) for split in SPLITS}
    total_bytes = sum(p.stat().st_size for p in files)
    batch: list[list[str]] = []
    index = 0

    def tokenize(documents: list[list[str]], first_index: int) -> None:
        flat = [s for doc in documents for s in doc]
        encoded = iter(backend.encode_batch(flat, add_special_tokens=False))
        for offset, doc in enumerate(documents):
            ids = [e.ids for e in (next(encoded) for _ in doc)]
            ids = [s for s in ids if s]  # a "sentence" of only control characters has no tokens
            if not ids:
                continue
            heldout = heldout_every > 0 and (first_index + offset) % heldout_every == heldout_every - 1
            writers["heldout" if heldout else "train"].add(ids)

    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not progress) as bar:
        for document in iter_documents(files, on_bytes=bar.update):
            batch.append(document)
            if len(batch) == batch_documents:
                tokenize(batch, index)
                index += len(batch)
                batch = []
            if max_documents is not None and index + len(batch) >= max_documents:
                break
        tokenize(batch, index)
    for writer in writers.values():
        writer.flush()
    if not writers["train"].names:
        raise DataError(f"{', '.join(map(str, files))}: no text found (one sentence or paragraph per line)")
    meta = {
        "fingerprint": key, "format": FORMAT_VERSION, "files": [str(p) for p in files], "settings": settings,
        "vocab_size": tokenizer.vocab_size, "dtype": dtype.name,
        "shards": {split: writers[split].names for split in SPLITS},
        "counts": {split: writers[split].counts for split in SPLITS},
    }
    write_text_atomic(output_dir / "meta.json", json.dumps(meta, indent=2))
    return meta


def run(files: list[Path], output_dir: Path, vocab: str = "all-minilm-l6-v2", heldout_every: int = 100,
        shard_tokens: int = 1 << 23, max_documents: int | None = None, progress: bool = True) -> Path:
    """Tokenize a corpus once into memory-mapped shards for `bertforge pretrain`.

    Args:
        files: Text files or folders (plain or .gz): one paragraph or sentence per line, a blank line
            between documents.
        output_dir: Where the shards go. Re-running with the same input and settings is skipped.
        vocab: A tokenizer/model folder (vocab.txt or tokenizer.json), or all-minilm-l6-v2 (the
            packaged uncased BERT vocabulary). Train your own with `bertforge train-vocab`.
        heldout_every: Every n-th document goes to the held-out split used for evaluation (0 = none).
        shard_tokens: Tokens per shard (a shard's example index is built in memory; its tokens are not).
        max_documents: Stop after this many documents (for quick experiments).
        progress: Show a progress bar.
    """
    from bertforge.pretrained import resolve_model

    tokenizer = BertTokenizer.from_pretrained(resolve_model(vocab))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    corpus = prepare_corpus(files, output_dir, tokenizer, heldout_every=heldout_every, shard_tokens=shard_tokens,
                            max_documents=max_documents, progress=progress)
    for split, counts in corpus.meta["counts"].items():
        print(f"{split}: {counts['documents']:,} documents, {counts['sentences']:,} sentences, "
              f"{counts['tokens']:,} tokens in {len(corpus.meta['shards'][split])} shards")
    return corpus.directory
