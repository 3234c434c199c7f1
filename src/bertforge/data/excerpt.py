"""A small corpus cut from a large one, with a vocabulary of its own: the first N documents -> one text file ->
a WordPiece vocabulary trained on exactly that text -> shards (`prepare_corpus`) with a held-out split.

For experiments that pre-train from scratch on a budget (`bertforge ablate`): the vocabulary fits the text
the models will see, and every run over the folder sees the same documents.

Layout of `output_dir`: corpus.txt (the excerpt, kept so an interrupted preparation starts from it) and
data/ (the prepared corpus, see data/shards.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bertforge.data.corpus import corpus_files, iter_documents
from bertforge.data.shards import PreparedCorpus, prepare_corpus
from bertforge.files import write_text_atomic
from bertforge.tokenizer import BertTokenizer


def prepare_excerpt(files: Sequence[str | Path], output_dir: Path, *, max_documents: int,
                    vocab_size: int) -> PreparedCorpus:
    """The first `max_documents` documents of `files`, a `vocab_size` WordPiece vocabulary, and their shards."""
    output_dir.mkdir(parents=True, exist_ok=True)
    text_file = output_dir / "corpus.txt"
    if not text_file.is_file():
        write_first_documents(files, text_file, max_documents=max_documents)
    count = text_file.read_text(encoding="utf-8").count("\n\n") + 1
    tokenizer = BertTokenizer.train([text_file], vocab_size=vocab_size)
    # ~2% of the documents held out (at least one in 5 for a small corpus) for held-out metrics.
    return prepare_corpus([text_file], output_dir / "data", tokenizer, heldout_every=min(50, max(5, count // 10)),
                          progress=False, shard_tokens=1 << 22)


def write_first_documents(files: Sequence[str | Path], text_file: Path, *, max_documents: int) -> None:
    """The corpus format again (one sentence per line, a blank line between documents), first documents only."""
    documents = []
    for i, document in enumerate(iter_documents(corpus_files(files))):
        if i >= max_documents:
            break
        documents.append("\n".join(document))
    write_text_atomic(text_file, "\n\n".join(documents) + "\n")
