"""WordPiece tokenizer: parity with Hugging Face BertTokenizerFast on >10,000 real texts, golden cases,
pairs and truncation, decoding, training and saving a vocabulary."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bertforge
from bertforge.tokenizer import BertTokenizer, TokenizerError, read_vocab

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vocab_dir(minilm_dir: Path, tmp_path_factory) -> Path:
    """A directory holding only vocab.txt, so Hugging Face builds its tokenizer from the vocabulary."""
    directory = tmp_path_factory.mktemp("vocab")
    shutil.copy(minilm_dir / "vocab.txt", directory / "vocab.txt")
    return directory


@pytest.fixture(scope="module")
def uncased(vocab_dir: Path) -> BertTokenizer:
    return BertTokenizer.from_vocab(vocab_dir / "vocab.txt")


@pytest.fixture(scope="module")
def cased(vocab_dir: Path) -> BertTokenizer:
    return BertTokenizer.from_vocab(vocab_dir / "vocab.txt", lowercase=False)


def _real_texts(data: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Single texts (SST-2, CoNLL sentences, Wikipedia paragraphs) and pairs (MRPC, RTE)."""
    singles: list[str] = []
    for name in ("dev.tsv", "train.tsv"):
        lines = (data / "glue/SST-2" / name).read_text(encoding="utf-8").splitlines()[1:]
        singles += [line.split("\t")[0] for line in lines[:3000]]
    words: list[str] = []
    for line in (data / "conll2003/valid.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("-DOCSTART-"):
            words.append(line.split(" ")[0])
        elif words:
            singles.append(" ".join(words))
            words = []
    with gzip.open(data / "wikipedia/wiki_AA.txt.gz", "rt", encoding="utf-8") as handle:
        paragraphs = [line.strip() for _, line in zip(range(6000), handle, strict=False) if line.strip()]
    singles += paragraphs[:2500]
    pairs: list[tuple[str, str]] = []
    for name in ("train.tsv", "dev.tsv"):
        for line in (data / "glue/MRPC" / name).read_text(encoding="utf-8-sig").splitlines()[1:]:
            cells = line.split("\t")
            pairs.append((cells[3], cells[4]))
    for line in (data / "glue/RTE/dev.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        cells = line.split("\t")
        pairs.append((cells[1], cells[2]))
    return singles, pairs


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_parity_with_hugging_face_on_real_text(shared_data: Path, vocab_dir: Path, lowercase: bool) -> None:
    ours = BertTokenizer.from_vocab(vocab_dir / "vocab.txt", lowercase=lowercase)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir), do_lower_case=lowercase)
    singles, pairs = _real_texts(shared_data)
    assert len(singles) + len(pairs) >= 10_000
    assert max(len(t) for t in singles) > 2000  # long Wikipedia paragraphs that must truncate
    checked = 0
    for max_length in (128, 512):
        mine = ours.encode(singles, max_length=max_length)
        ref = theirs(singles, max_length=max_length, truncation=True, return_offsets_mapping=True,
                     return_token_type_ids=True)
        assert mine.input_ids == ref["input_ids"]
        assert mine.token_type_ids == ref["token_type_ids"]
        assert mine.offsets == [[tuple(o) for o in row] for row in ref["offset_mapping"]]
        assert mine.word_ids == [ref.word_ids(i) for i in range(len(singles))]
        checked += len(singles)
        lengths = [len(ids) for ids in theirs(singles)["input_ids"]]
        assert mine.truncated == [n > max_length for n in lengths]
    assert sum(mine.truncated) > 0 or not lowercase  # uncased: some paragraphs exceed even 512
    for strategy in ("longest_first", "only_first", "only_second"):
        # 48 tokens: short enough that every truncation strategy must cut the real pairs.
        firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
        if strategy != "longest_first":  # only_* cannot cut more than the chosen side holds; HF raises too
            keep = [i for i, (a, b) in enumerate(pairs)
                    if len(ours.tokenize(b if strategy == "only_first" else a)) + 3 < 48]
            firsts, seconds = [firsts[i] for i in keep], [seconds[i] for i in keep]
        mine = ours.encode(firsts, seconds, max_length=48, truncation=strategy)
        ref = theirs(firsts, seconds, max_length=48, truncation=strategy, return_offsets_mapping=True)
        assert mine.input_ids == ref["input_ids"], strategy
        assert mine.token_type_ids == ref["token_type_ids"], strategy
        assert mine.offsets == [[tuple(o) for o in row] for row in ref["offset_mapping"]], strategy
        checked += len(firsts)
    assert checked >= 20_000


def test_tokenizer_json_matches_vocab_txt(minilm_dir: Path, uncased: BertTokenizer) -> None:
    from_json = BertTokenizer.from_pretrained(minilm_dir)  # prefers tokenizer.json
    texts = ["Héllo, Wörld! 我爱北京", "A second, longer sentence with [MASK] inside.", ""]
    assert from_json.encode(texts).input_ids == uncased.encode(texts).input_ids
    assert from_json.lowercase and from_json.vocab_size == 30522
    assert from_json.encode(["x " * 600]).truncated == [True]  # the file's own truncation (128) is dropped
    assert len(from_json.encode(["x " * 600]).input_ids[0]) == 512


GOLDEN_UNCASED = {
    "Héllo Wörld! Crème brûlée, naïve café.":
        ["hello", "world", "!", "cr", "##eme", "br", "##ule", "##e", ",", "naive", "cafe", "."],
    "ÅÄÖ åäö Ñ ñ ß": ["aa", "##o", "aa", "##o", "n", "n", "ß"],
    # Every CJK ideograph is its own word; characters missing from this English vocab become [UNK].
    "我爱北京天安门": ["我", "[UNK]", "北", "京", "天", "安", "[UNK]"],
    # Kana are not CJK ideographs: "のテキスト" stays one word and is split by WordPiece.
    "日本語のテキスト": ["日", "本", "語", "の", "##テ", "##キ", "##ス", "##ト"],
    # Control (\x00, \x07) and format (zero-width space) characters are deleted, joining the word.
    "hello\x00wor\x07ld\u200b!": ["hello", "##world", "!"],
    "tab\tand\nnewline\r\nend": ["tab", "and", "new", "##line", "end"],
    "I love 🤗 and 😀 emojis": ["i", "love", "[UNK]", "and", "[UNK]", "em", "##oj", "##is"],
    "a" * 101: ["[UNK]"],  # longer than max_input_chars_per_word (100)
    "supercalifragilisticexpialidocious":
        ["super", "##cal", "##if", "##rag", "##ilis", "##tic", "##ex", "##pia", "##lid", "##oc", "##ious"],
    "Don't stop—it's 3.14159!": ["don", "'", "t", "stop", "—", "it", "'", "s", "3", ".", "141", "##59", "!"],
    "the [MASK] sat": ["the", "[MASK]", "sat"],  # special tokens in raw text are kept whole
    "   ": [],
}
GOLDEN_CASED = {  # the uncased vocabulary has no capitalised or accented pieces: cased input shows it
    "Héllo Wörld!": ["[UNK]", "[UNK]", "!"],
    "UNAFFABLE unaffable": ["[UNK]", "una", "##ffa", "##ble"],
    "我爱北京": ["我", "[UNK]", "北", "京"],
}


@pytest.mark.parametrize("text", list(GOLDEN_UNCASED))
def test_golden_uncased(uncased: BertTokenizer, text: str) -> None:
    assert uncased.tokenize(text) == GOLDEN_UNCASED[text]


@pytest.mark.parametrize("text", list(GOLDEN_CASED))
def test_golden_cased(cased: BertTokenizer, text: str) -> None:
    assert cased.tokenize(text) == GOLDEN_CASED[text]


def test_long_word_at_the_limit_is_split_not_unknown(uncased: BertTokenizer) -> None:
    pieces = uncased.tokenize("a" * 100)
    assert "[UNK]" not in pieces and pieces[0] == "aaa" and all(p.startswith("##") for p in pieces[1:])


def test_pair_encoding_fields(uncased: BertTokenizer) -> None:
    enc = uncased.encode("Héllo there", "General Kenobi!")
    assert enc.input_ids == [[101, 7592, 2045, 102, 2236, 6358, 16429, 2072, 999, 102]]
    assert enc.token_type_ids == [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
    assert enc.special_tokens_mask == [[1, 0, 0, 1, 0, 0, 0, 0, 0, 1]]
    assert enc.offsets == [[(0, 0), (0, 5), (6, 11), (0, 0), (0, 7), (8, 11), (11, 13), (13, 14), (14, 15), (0, 0)]]
    assert enc.word_ids == [[None, 0, 1, None, 0, 1, 1, 1, 2, None]]
    assert enc.sequence_ids == [[None, 0, 0, None, 1, 1, 1, 1, 1, None]]


def test_padding_and_tensors(uncased: BertTokenizer) -> None:
    enc = uncased.encode(["short", "a somewhat longer text here"], padding="longest")
    assert enc.input_ids.shape == (2, 7)
    assert enc.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]
    assert enc.input_ids[0, 3:].tolist() == [uncased.pad_id] * 4
    assert enc.special_tokens_mask[0].tolist() == [1, 0, 1, 1, 1, 1, 1]
    fixed = uncased.encode(["short"], padding="max_length", max_length=16)
    assert fixed.input_ids.shape == (1, 16)
    tensors = enc.tensors()
    assert tensors["input_ids"].dtype.is_floating_point is False and tensors["input_ids"].shape == (2, 7)
    with pytest.raises(TokenizerError, match="padded"):
        uncased.encode("no padding").tensors()


def test_truncation_strategies(uncased: BertTokenizer) -> None:
    a, b = "one two three four five six seven eight", "alpha beta gamma"
    longest = uncased.encode(a, b, max_length=10, truncation="longest_first")
    assert len(longest.input_ids[0]) == 10 and longest.truncated == [True]
    assert uncased.decode(longest.input_ids[0]) == "one two three four alpha beta gamma"
    only_first = uncased.encode(a, b, max_length=9, truncation="only_first")
    assert uncased.decode(only_first.input_ids[0]) == "one two three alpha beta gamma"
    with pytest.raises(TokenizerError, match="only_second"):
        uncased.encode(a, b, max_length=9, truncation="only_second")  # b cannot shrink enough
    with pytest.raises(TokenizerError, match="truncation is off"):
        uncased.encode(a, max_length=5, truncation=None)
    untouched = uncased.encode(a, max_length=64)
    assert untouched.truncated == [False]


def test_decode_joins_wordpieces(uncased: BertTokenizer) -> None:
    ids = uncased.encode("The unaffable supercalifragilisticexpialidocious cat.").input_ids[0]
    assert uncased.decode(ids) == "the unaffable supercalifragilisticexpialidocious cat."
    assert uncased.decode(ids, skip_special_tokens=False).startswith("[CLS] the")


def test_train_save_and_reload_with_hugging_face(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt.gz"
    lines = [f"the quick brown fox number {i} jumps over the lazy dog near tokenization" for i in range(300)]
    with gzip.open(corpus, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    tok = BertTokenizer.train([corpus], vocab_size=120, min_frequency=2)
    assert tok.vocab()[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 60 <= tok.vocab_size <= 120
    assert any(t.startswith("##") for t in tok.vocab())
    tok.save_pretrained(tmp_path / "out")
    assert not hasattr(tok, "save")  # one save name, the one transformers uses
    vocab = read_vocab(tmp_path / "out/vocab.txt")
    assert len(vocab) == tok.vocab_size
    # The saved vocab.txt alone reproduces the tokenizer, in bertforge and in Hugging Face.
    (tmp_path / "only_vocab").mkdir()
    shutil.copy(tmp_path / "out/vocab.txt", tmp_path / "only_vocab/vocab.txt")
    reloaded = BertTokenizer.from_vocab(tmp_path / "only_vocab/vocab.txt")
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "only_vocab"))
    text = "The quick tokenization fox jumps over 7 lazy dogs"
    assert reloaded.encode(text).input_ids[0] == tok.encode(text).input_ids[0] == hf(text)["input_ids"]
    assert BertTokenizer.from_pretrained(tmp_path / "out").encode(text).input_ids == tok.encode(text).input_ids


def _tied_corpus(path: Path) -> Path:
    """Words of random letters: many pairs are equally frequent, so the order in which the trainer breaks ties
    decides the vocabulary (before the fix, three calls gave three vocabularies)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TRAIN_AND_SAVE = ("import sys; from bertforge.tokenizer import BertTokenizer; "
                  "BertTokenizer.train([sys.argv[1]], vocab_size=200).save_pretrained(sys.argv[2])")


def test_training_is_deterministic_across_calls_and_processes(tmp_path: Path) -> None:
    corpus = _tied_corpus(tmp_path / "corpus.txt")
    for name in ("a", "b", "c"):
        BertTokenizer.train([corpus], vocab_size=200).save_pretrained(tmp_path / name)
    first = {f: (tmp_path / "a" / f).read_bytes() for f in ("vocab.txt", "tokenizer.json")}
    for name in ("b", "c"):
        assert {f: (tmp_path / name / f).read_bytes() for f in first} == first
    # Fresh processes with other hash seeds (Python's and the library's hash maps both start afresh).
    env = {**os.environ, "PYTHONPATH": str(Path(bertforge.__file__).parents[1])}
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", TRAIN_AND_SAVE, str(corpus), str(tmp_path / f"seed{seed}")],
                       env={**env, "PYTHONHASHSEED": seed}, check=True, timeout=120)
        assert {f: (tmp_path / f"seed{seed}" / f).read_bytes() for f in first} == first
    # The ## pieces are ordinary vocabulary entries, not special tokens matched in raw text.
    trained = BertTokenizer.from_pretrained(tmp_path / "a")
    reread = BertTokenizer.from_vocab(tmp_path / "a" / "vocab.txt")
    assert trained.tokenize("abc ##a ##abc") == reread.tokenize("abc ##a ##abc")
    assert "##a" not in trained.tokenize("x ##a")


def test_bad_vocabularies(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        BertTokenizer.from_vocab(tmp_path / "missing.txt")
    dup = tmp_path / "dup.txt"
    dup.write_text("[PAD]\n[UNK]\nhello\nhello\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"dup.txt:4: token 'hello' already on line 3"):
        BertTokenizer.from_vocab(dup)
    no_specials = tmp_path / "nospec.txt"
    no_specials.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"lacks the special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        BertTokenizer.from_vocab(no_specials)
    with pytest.raises(TokenizerError, match="no tokenizer.json or vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        BertTokenizer.from_tokenizer_json(bad_json)
