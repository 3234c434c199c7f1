"""WordPiece tokenization (BERT §3, Wu et al. 2016) on the Hugging Face `tokenizers` library.

The pipeline is google-research/bert's: clean text (drop control characters, normalise whitespace)
-> put spaces around every CJK character -> lower-case and strip accents (uncased models) -> split on
whitespace and punctuation -> greedy longest-match-first WordPiece with `##` continuation pieces,
[UNK] for a word longer than 100 characters or not coverable by the vocabulary.

`tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt")` is the transformers calling
convention (a `BatchEncoding` dict ready for `model(**batch)`); `encode` returns everything the tasks need
(offsets, word ids, sequence ids) in one `Encoding`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from bertforge.errors import BertforgeError
from bertforge.files import open_text, write_text_atomic
from bertforge.pretrained import resolve_model

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_INPUT_CHARS_PER_WORD = 100  # google-research/bert tokenization.py: longer words become [UNK]

Truncation = Literal["longest_first", "only_first", "only_second"]
Padding = Literal["none", "longest", "max_length"]
# The transformers spellings accepted by BertTokenizer.__call__ -> ours.
_CALL_PADDING: dict = {False: "none", "do_not_pad": "none", True: "longest", "longest": "longest",
                       "max_length": "max_length"}
_CALL_TRUNCATION: dict = {False: None, "do_not_truncate": None, True: "longest_first",
                          **{name: name for name in ("longest_first", "only_first", "only_second")}}


class TokenizerError(BertforgeError, ValueError):
    """A vocabulary or tokenizer file that cannot be used, or an input that cannot be encoded."""


@dataclass
class Encoding:
    """A batch of encoded texts. With padding the id fields are [B, T] int64 arrays, otherwise lists.

    offsets: per token (start, end) character span in its own text ((0, 0) for special tokens).
    word_ids: per token the index of the word it came from, None for special tokens.
    sequence_ids: per token 0 (text A), 1 (text B) or None (special tokens).
    truncated: per text, whether tokens were dropped to fit max_length.
    """

    input_ids: np.ndarray | list[list[int]]
    token_type_ids: np.ndarray | list[list[int]]
    attention_mask: np.ndarray | list[list[int]]
    special_tokens_mask: np.ndarray | list[list[int]]
    offsets: list[list[tuple[int, int]]] = field(repr=False)
    word_ids: list[list[int | None]] = field(repr=False)
    sequence_ids: list[list[int | None]] = field(repr=False)
    truncated: list[bool] = field(repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    def tensors(self) -> dict:
        """input_ids, attention_mask and token_type_ids as torch tensors (needs padding)."""
        import torch

        if not isinstance(self.input_ids, np.ndarray):
            raise TokenizerError("tensors() needs a padded encoding: encode with padding='longest'")
        return {
            "input_ids": torch.from_numpy(self.input_ids),
            "attention_mask": torch.from_numpy(self.attention_mask),
            "token_type_ids": torch.from_numpy(self.token_type_ids),
        }


class BatchEncoding(dict):
    """What calling a tokenizer returns: input_ids, token_type_ids and attention_mask (lists, numpy arrays or
    torch tensors), readable as keys or attributes, so `model(**batch)` works; `encoding` holds the full
    `Encoding` (offsets, word ids) of the same call."""

    def __init__(self, columns: dict, encoding: Encoding) -> None:
        super().__init__(columns)
        self.encoding = encoding

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> BatchEncoding:
        """The same batch with every tensor on `device`."""
        return BatchEncoding({k: v.to(device) for k, v in self.items()}, self.encoding)


class BertTokenizer:
    """BERT's WordPiece tokenizer: single texts and pairs `[CLS] A [SEP] B [SEP]` with segment ids."""

    def __init__(self, backend: Tokenizer, *, lowercase: bool, model_max_length: int = 512) -> None:
        vocab = backend.get_vocab()
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
        if missing:
            raise TokenizerError(
                f"the vocabulary lacks the special tokens {missing}; BERT needs all of {SPECIAL_TOKENS}"
            )
        self.backend = backend
        self.lowercase = lowercase
        self.model_max_length = model_max_length
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)
        # Registered as special: matched whole in raw text ("[MASK]" is one token) and skipped by decode.
        self.backend.add_special_tokens(list(SPECIAL_TOKENS))
        self.backend.no_padding()
        self.backend.no_truncation()
        self._truncation: tuple | None = None
        self.backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_vocab(cls, vocab_file: str | Path, *, lowercase: bool = True, strip_accents: bool | None = None,
                   split_chinese_chars: bool = True, model_max_length: int = 512) -> BertTokenizer:
        """From a `vocab.txt` (one token per line, the line number is the id)."""
        vocab = read_vocab(vocab_file)
        backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
        _set_pipeline(backend, lowercase=lowercase, strip_accents=strip_accents,
                      split_chinese_chars=split_chinese_chars)
        return cls(backend, lowercase=lowercase, model_max_length=model_max_length)

    @classmethod
    def from_tokenizer_json(cls, path: str | Path, *, model_max_length: int = 512) -> BertTokenizer:
        """From a Hugging Face `tokenizer.json` (its padding and truncation settings are dropped)."""
        path = Path(path)
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception for malformed JSON
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({exc})") from exc
        lowercase = _normalizer_lowercases(json.loads(path.read_text(encoding="utf-8")).get("normalizer"))
        return cls(backend, lowercase=lowercase, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> BertTokenizer:
        """From a model folder, the packaged `all-minilm-l6-v2` or a Hub id (pretrained.resolve_model):
        `tokenizer.json` if present, else `vocab.txt` + `tokenizer_config.json`."""
        directory = resolve_model(name_or_path)
        settings = {}
        if (directory / "tokenizer_config.json").is_file():
            settings = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        max_len = settings.get("model_max_length", 512)
        max_len = max_len if isinstance(max_len, int) and max_len < 1_000_000 else 512
        if (directory / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(directory / "tokenizer.json", model_max_length=max_len)
        if (directory / "vocab.txt").is_file():
            return cls.from_vocab(
                directory / "vocab.txt",
                lowercase=settings.get("do_lower_case", True),
                strip_accents=settings.get("strip_accents"),
                split_chinese_chars=settings.get("tokenize_chinese_chars", True),
                model_max_length=max_len,
            )
        raise TokenizerError(
            f"{directory}: no tokenizer.json or vocab.txt; a BERT model directory needs one of them "
            "(train one with `bertforge train-vocab`)"
        )

    @classmethod
    def train(cls, files: Sequence[str | Path], *, vocab_size: int = 30522, min_frequency: int = 2,
              lowercase: bool = True, limit_alphabet: int = 1000, show_progress: bool = False) -> BertTokenizer:
        """Learn a WordPiece vocabulary from text files (plain or .gz), specials first: [PAD]=0 … [MASK]=4.
        The same files and settings give the same vocabulary, byte for byte, in any process."""
        backend = _trainable_backend(lowercase)
        # `tokenizers` numbers the ## pieces in the order it happens to meet them in a hash map of the corpus's
        # words, and breaks ties between equally frequent merges by those numbers (huggingface/tokenizers#1794),
        # so its vocabulary changes from call to call. Handing it the alphabet and the ## pieces, sorted,
        # fixes every number before training starts.
        alphabet, pieces = _sorted_alphabet(backend, files, limit_alphabet)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[*SPECIAL_TOKENS, *pieces],
            initial_alphabet=alphabet, limit_alphabet=len(alphabet), continuing_subword_prefix="##",
            show_progress=show_progress,
        )
        backend.train_from_iterator(_read_lines(files), trainer=trainer)
        # The ## pieces went in as special tokens only to fix their ids; a special token would also match
        # "##a" typed in a text, so the tokenizer is rebuilt from the trained vocabulary alone.
        vocab = backend.get_vocab()
        trained = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
        _set_pipeline(trained, lowercase=lowercase, strip_accents=None, split_chinese_chars=True)
        return cls(trained, lowercase=lowercase)

    # ----- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def vocab(self) -> list[str]:
        """Tokens ordered by id."""
        by_id = sorted(self.backend.get_vocab().items(), key=lambda kv: kv[1])
        return [token for token, _ in by_id]

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

    # ----- encoding -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of one text, without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def encode(
        self,
        texts: str | Sequence[str],
        pairs: str | Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        truncation: Truncation | None = "longest_first",
        padding: Padding = "none",
        add_special_tokens: bool = True,
    ) -> Encoding:
        """Encode one text or a batch (optionally paired with a second text each).

        max_length defaults to the model's maximum (512); truncation=None raises on an over-long input.
        """
        if isinstance(texts, str):
            texts = [texts]
            pairs = [pairs] if isinstance(pairs, str) else pairs
        if pairs is not None and len(pairs) != len(texts):
            raise TokenizerError(f"got {len(texts)} texts but {len(pairs)} pair texts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TokenizerError(f"text {i} is {type(t).__name__}, not str")
        max_length = max_length or self.model_max_length
        self._set_truncation(max_length, truncation)
        inputs = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        try:
            encodings = self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except Exception as exc:  # e.g. only_second when the second text is already too short
            raise TokenizerError(f"cannot truncate to max_length={max_length} with {truncation!r}: {exc}") from exc
        if truncation is None:
            for i, e in enumerate(encodings):
                if len(e.ids) > max_length:
                    raise TokenizerError(f"text {i} has {len(e.ids)} tokens > max_length={max_length} "
                                         "and truncation is off")
        ids = [e.ids for e in encodings]
        type_ids = [e.type_ids for e in encodings]
        special = [e.special_tokens_mask for e in encodings]
        mask = [[1] * len(x) for x in ids]
        if padding != "none":
            width = max_length if padding == "max_length" else max((len(x) for x in ids), default=0)
            ids, type_ids, mask, special = (
                _pad(rows, width, fill) for rows, fill in ((ids, self.pad_id), (type_ids, 0), (mask, 0), (special, 1))
            )
        return Encoding(
            input_ids=ids, token_type_ids=type_ids, attention_mask=mask, special_tokens_mask=special,
            offsets=[e.offsets for e in encodings], word_ids=[e.word_ids for e in encodings],
            sequence_ids=[e.sequence_ids for e in encodings], truncated=[bool(e.overflowing) for e in encodings],
        )

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
    ) -> BatchEncoding:
        """Encode like a transformers tokenizer: padding True/"longest"/"max_length", truncation
        True/"longest_first"/"only_first"/"only_second", return_tensors None (lists), "np" or "pt".
        One string gives un-batched lists, or [1, T] arrays. Unlike transformers, an input longer than
        max_length (default: the model's maximum) with truncation off is an error, not a warning."""
        if padding not in _CALL_PADDING:
            raise TokenizerError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', "
                                 f"not {padding!r}")
        if truncation not in _CALL_TRUNCATION:
            raise TokenizerError(f"truncation must be True, False, 'longest_first', 'only_first' or 'only_second', "
                                 f"not {truncation!r}")
        if return_tensors not in (None, "np", "pt"):
            raise TokenizerError(f"return_tensors must be None, 'np' or 'pt', not {return_tensors!r}")
        enc = self.encode(text, text_pair, max_length=max_length, truncation=_CALL_TRUNCATION[truncation],
                          padding=_CALL_PADDING[padding], add_special_tokens=add_special_tokens)
        columns = {"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids,
                   "attention_mask": enc.attention_mask}
        if return_tensors is None:
            columns = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in columns.items()}
            if isinstance(text, str):
                columns = {k: v[0] for k, v in columns.items()}
            return BatchEncoding(columns, enc)
        if len({len(row) for row in enc.input_ids}) > 1:
            raise TokenizerError(f"return_tensors={return_tensors!r} needs rows of one length: pass padding=True")
        columns = {k: np.asarray(v, dtype=np.int64) for k, v in columns.items()}
        if return_tensors == "pt":
            import torch

            columns = {k: torch.from_numpy(v) for k, v in columns.items()}
        return BatchEncoding(columns, enc)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Ids back to text: `##` pieces joined to their word, spaces before punctuation removed."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def _set_truncation(self, max_length: int, truncation: Truncation | None) -> None:
        key = (max_length, truncation)
        if key == self._truncation:
            return
        if truncation is None:
            self.backend.no_truncation()
        else:
            if truncation not in ("longest_first", "only_first", "only_second"):
                raise TokenizerError(f"truncation must be longest_first, only_first or only_second, not {truncation!r}")
            self.backend.enable_truncation(max_length, strategy=truncation)
        self._truncation = key

    # ----- saving -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write vocab.txt (google-research/bert and HF read it), tokenizer.json and tokenizer_config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / "vocab.txt", "".join(token + "\n" for token in self.vocab()))
        write_text_atomic(directory / "tokenizer.json", self.backend.to_str(pretty=True))
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "model_max_length": self.model_max_length,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        write_text_atomic(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        specials = {name: tok for name, tok in zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                                                   SPECIAL_TOKENS, strict=True)}
        write_text_atomic(directory / "special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
        return directory


def read_vocab(vocab_file: str | Path) -> dict[str, int]:
    """vocab.txt -> {token: line number}. Duplicate or empty lines are errors, with the line named."""
    path = Path(vocab_file)
    if not path.is_file():
        raise TokenizerError(f"{path}: vocabulary file not found")
    vocab: dict[str, int] = {}
    with open_text(path) as handle:  # strict UTF-8: a bad byte is named, not replaced
        for line_no, line in enumerate(handle, start=1):
            token = line.rstrip("\n").rstrip("\r")
            if not token.strip():
                raise TokenizerError(f"{path}:{line_no}: empty token; every line of vocab.txt must hold one token")
            if token in vocab:
                raise TokenizerError(f"{path}:{line_no}: token {token!r} already on line {vocab[token] + 1}")
            vocab[token] = line_no - 1
    if not vocab:
        raise TokenizerError(f"{path}: the vocabulary is empty")
    return vocab


def _set_pipeline(backend: Tokenizer, *, lowercase: bool, strip_accents: bool | None,
                  split_chinese_chars: bool) -> None:
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=split_chinese_chars, strip_accents=strip_accents, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)


def _normalizer_lowercases(spec: dict | None) -> bool:
    if not spec:
        return False
    if spec.get("type") == "Sequence":
        return any(_normalizer_lowercases(s) for s in spec.get("normalizers", []))
    return spec.get("type") == "Lowercase" or bool(spec.get("lowercase", False))


def _pad(rows: list[list[int]], width: int, fill: int) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _trainable_backend(lowercase: bool) -> Tokenizer:
    backend = Tokenizer(WordPiece(unk_token="[UNK]", max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    _set_pipeline(backend, lowercase=lowercase, strip_accents=None, split_chinese_chars=True)
    return backend


def _sorted_alphabet(backend: Tokenizer, files: Sequence[str | Path], limit: int) -> tuple[list[str], list[str]]:
    """The characters WordPiece training keeps (the `limit` most frequent in the corpus's words, ties by code
    point) and the ## pieces of those that occur inside a word, both sorted. Words are counted as the trainer
    counts them: normalised and pre-tokenised by `backend`, a block of lines at a time."""
    words: Counter[str] = Counter()
    for block in _blocks(_read_lines(files), lines_per_block=10_000):
        normalized = backend.normalizer.normalize_str(block)
        words.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
    chars: Counter[str] = Counter()
    inside: set[str] = set()
    for word, count in words.items():
        for char in word:
            chars[char] += count
        inside.update(word[1:])
    kept = sorted(sorted(chars, key=lambda c: (-chars[c], c))[:limit])
    return kept, ["##" + c for c in kept if c in inside]


def _blocks(lines: Iterator[str], *, lines_per_block: int) -> Iterator[str]:
    """Lines joined into blocks: one library call per block instead of per line. Words never cross a line
    break, so counting a block's words counts its lines' words."""
    block: list[str] = []
    for line in lines:
        block.append(line)
        if len(block) == lines_per_block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _read_lines(files: Sequence[str | Path]) -> Iterator[str]:
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise TokenizerError(f"{path}: training file not found")
        with open_text(path) as handle:
            yield from handle
