"""Raw pre-training text: documents made of sentences.

The input format is the original BERT one (google-research/bert `create_pretraining_data.py`): plain
text (or `.gz`), one paragraph or sentence per line, a blank line between documents. Lines are split
into sentences by a small rule-based splitter, because NSP pairs (BERT §3.1) are built from whole
sentences and a Wikipedia line is a whole paragraph.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from bertforge.errors import DataError
from bertforge.files import TextLines, check_text_file

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets), then whitespace, then
# something that can start a sentence (capital letter, digit, opening quote or bracket).
_BOUNDARY = re.compile(r"""(?<=[.!?])(["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")
# Words whose final period is not a sentence end ("Dr. Smith", "e.g. Paris", "U.S. Army", "J. Smith").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al approx fig no vol ch sec dept est inc ltd co corp "
    "gen col lt sgt capt rev gov sen rep pres jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k".split()
)


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences; never drops text (the pieces joined by spaces give it back)."""
    text = text.strip()
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        candidate = text[start:match.start()]
        last_word = candidate.rsplit(None, 1)[-1].lower().rstrip(".") if candidate.split() else ""
        # Single letters ("J.") and known abbreviations do not end a sentence.
        if len(last_word) <= 1 or last_word in _ABBREVIATIONS:
            continue
        sentences.append(text[start:match.end(1)].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def iter_documents(files: Sequence[str | Path], *, on_bytes=None) -> Iterator[list[str]]:
    """Yield each document as its list of sentences (empty documents are skipped).

    Text that is not UTF-8 and damaged gzip streams are errors naming the file and the line.
    on_bytes: optional callback(bytes_read_since_last_call) for a progress bar (for a .gz file these are
    compressed bytes, so the bar knows its total).
    """
    for path in files:
        with TextLines(check_text_file(path, what="corpus file")) as reader:
            seen = 0
            document: list[str] = []
            for line in reader:
                if line.strip():
                    document.extend(split_sentences(line))
                elif document:
                    yield document
                    document = []
                if on_bytes is not None and reader.tell() != seen:
                    on_bytes(reader.tell() - seen)
                    seen = reader.tell()
            if document:
                yield document


def corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files given directly, or every *.txt / *.txt.gz / *.gz file inside given folders (sorted); each must
    exist, hold something and, if .gz, be gzip."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".txt", ".gz")))
            if not inside:
                raise DataError(f"{path}: the folder holds no .txt or .gz files")
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    if not found:
        raise DataError("no corpus files given; pass text files or folders with --files")
    return [check_text_file(p, what="corpus file") for p in found]
