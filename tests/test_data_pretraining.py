"""Corpus reading, shards, NSP example construction and dynamic masking, measured on real Wikipedia text."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bertforge.data.corpus import iter_documents, split_sentences
from bertforge.data.masking import (
    MaskingSettings,
    continuation_table,
    mask_tokens,
    replacement_vocabulary,
)
from bertforge.data.pretraining import (
    IS_NEXT,
    NOT_NEXT,
    DataPosition,
    ExampleSettings,
    ExampleStream,
    build_examples,
    collate,
    document_of,
)
from bertforge.data.shards import PreparedCorpus, prepare_corpus
from bertforge.tokenizer import BertTokenizer


@pytest.fixture(scope="module")
def wiki(shared_data, minilm_dir, tmp_path_factory) -> PreparedCorpus:
    """The first 120 Wikipedia articles (~500k tokens) prepared with the uncased BERT vocabulary."""
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    out = tmp_path_factory.mktemp("wiki")
    return prepare_corpus([shared_data / "wikipedia" / "wiki_AA.txt.gz"], out, tokenizer, max_documents=120,
                          heldout_every=40, progress=False)


def test_split_sentences_golden():
    text = ('Dr. Smith went to Washington, D.C. in 1990. He met J. R. Tolkien there! "Was it fun?" '
            "Yes, e.g. the U.S. Army band played. 3 people came.")
    assert split_sentences(text) == [
        "Dr. Smith went to Washington, D.C. in 1990.",
        "He met J. R. Tolkien there!",
        '"Was it fun?"',
        "Yes, e.g. the U.S. Army band played.",
        "3 people came.",
    ]
    assert split_sentences("   ") == []
    assert split_sentences("no final stop") == ["no final stop"]


def test_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("Title one\nFirst para. Second sentence here.\n\n\nTitle two\nOther text.\n", encoding="utf-8")
    assert list(iter_documents([path])) == [["Title one", "First para.", "Second sentence here."],
                                           ["Title two", "Other text."]]


def test_shards_round_trip_and_rerun_is_skipped(wiki, shared_data, minilm_dir):
    meta = wiki.meta
    assert meta["counts"]["train"]["documents"] == 117 and meta["counts"]["heldout"]["documents"] == 3
    shard = next(wiki.shards("train"))
    assert shard.tokens.dtype == np.uint16 and isinstance(shard.tokens, np.memmap)
    tokenizer = wiki.tokenizer()
    # The first document is the article "Anarchism": title line, then the first sentence.
    first = [tokenizer.decode(shard.tokens[shard.sentences[i]:shard.sentences[i + 1]]) for i in range(2)]
    assert first[0] == "anarchism"
    assert first[1].startswith("anarchism is a political philosophy that advocates stateless societies")
    stamp = (wiki.directory / "train" / "00000.tokens.npy").stat().st_mtime_ns
    again = prepare_corpus([shared_data / "wikipedia" / "wiki_AA.txt.gz"], wiki.directory,
                           BertTokenizer.from_pretrained(minilm_dir), max_documents=120, heldout_every=40,
                           progress=False)
    assert again.meta == meta
    assert (wiki.directory / "train" / "00000.tokens.npy").stat().st_mtime_ns == stamp


def test_shards_are_reproducible(tmp_path, minilm_dir):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"Doc {d} begins. It has words {d}.\nMore text {d}.\n\n" for d in range(30)))
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    a = prepare_corpus([corpus], tmp_path / "a", tokenizer, heldout_every=10, progress=False)
    b = prepare_corpus([corpus], tmp_path / "b", tokenizer, heldout_every=10, progress=False)
    for split in ("train", "heldout"):
        for pa, pb in zip(a.shard_paths(split), b.shard_paths(split), strict=True):
            for part in ("tokens", "sentences", "documents"):
                assert np.array_equal(np.load(f"{pa}.{part}.npy"), np.load(f"{pb}.{part}.npy"))
    assert a.meta["counts"] == {"train": {"documents": 27, "sentences": 81, "tokens": 27 * 13},
                                "heldout": {"documents": 3, "sentences": 9, "tokens": 3 * 13}}


@pytest.fixture(scope="module")
def examples(wiki):
    shard = next(wiki.shards("train"))
    return shard, build_examples(shard, random.Random(0), ExampleSettings(max_seq_length=128))


def test_nsp_is_half_next_half_random(examples):
    shard, ex = examples
    assert len(ex) > 3000
    assert abs((ex[:, 4] == NOT_NEXT).mean() - 0.5) < 0.02


def test_is_next_b_follows_a_and_not_next_comes_from_another_document(examples):
    shard, ex = examples
    starts = set(np.asarray(shard.sentences).tolist())
    untrimmed = 0
    for a0, a1, b0, b1, label in ex.tolist():
        assert 1 <= a1 - a0 and 1 <= b1 - b0 and (a1 - a0) + (b1 - b0) <= 128 - 3
        if label == IS_NEXT:
            assert document_of(shard, a0) == document_of(shard, b0)
            assert a1 <= b0 and any(t in starts for t in range(a1, b0 + 1))
            if a1 == b0:  # B starts with the sentence right after A's last one
                assert a1 in starts
                untrimmed += 1
            else:  # a gap only where truncation trimmed A's back or B's front to fit
                assert (a1 - a0) + (b1 - b0) == 128 - 3
        else:
            assert document_of(shard, a0) != document_of(shard, b0)
    assert untrimmed > 300  # (most chunks overshoot the target and are trimmed, as in BERT)


def test_short_sequences_and_lengths(examples):
    shard, ex = examples
    lengths = (ex[:, 1] - ex[:, 0]) + (ex[:, 3] - ex[:, 2]) + 3
    assert lengths.max() == 128
    # BERT: 10% of targets are shorter; long Wikipedia paragraphs fill the rest to (nearly) 128.
    assert 0.08 < (lengths < 100).mean() < 0.25


def test_stream_resumes_at_a_position(wiki):
    shards = list(wiki.shards("train"))
    settings = ExampleSettings(max_seq_length=64)
    whole = ExampleStream(shards, settings, seed=3).take(50)
    first = ExampleStream(shards, settings, seed=3)
    first.take(20)
    resumed = ExampleStream(shards, settings, seed=3, position=DataPosition(**vars(first.position)))
    assert [r.tolist() for _, r in resumed.take(30)] == [r.tolist() for _, r in whole[20:]]


def _batches(wiki, count: int, max_seq_length: int = 128):
    tokenizer = wiki.tokenizer()
    stream = ExampleStream(list(wiki.shards("train")), ExampleSettings(max_seq_length), seed=1)
    for _ in range(count):
        yield collate(stream.take(64), cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)


def test_masking_statistics_on_real_text(wiki):
    tokenizer = wiki.tokenizer()
    replacements = replacement_vocabulary(tokenizer.vocab_size, tokenizer.special_ids)
    generator = torch.Generator().manual_seed(0)
    counts = dict(maskable=0, selected=0, mask=0, same=0, other=0, special_selected=0, over_limit=0)
    for batch in _batches(wiki, 30):
        out = mask_tokens(batch.input_ids, batch.special_tokens_mask, mask_id=tokenizer.mask_id,
                          replacement_ids=replacements, settings=MaskingSettings(), generator=generator)
        sel = out.masked_positions
        counts["maskable"] += int((~batch.special_tokens_mask).sum())
        counts["selected"] += int(sel.sum())
        counts["special_selected"] += int((sel & batch.special_tokens_mask).sum())
        counts["over_limit"] += int((sel.sum(1) > 20).sum())
        counts["mask"] += int((out.input_ids[sel] == tokenizer.mask_id).sum())
        counts["same"] += int((out.input_ids[sel] == batch.input_ids[sel]).sum())
        assert torch.equal(out.labels[sel], batch.input_ids[sel]) and bool((out.labels[~sel] == -100).all())
        assert torch.equal(out.input_ids[~sel], batch.input_ids[~sel])
        assert not bool(torch.isin(out.input_ids[sel & (out.input_ids != tokenizer.mask_id)],
                                   torch.tensor([tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])).any())
    assert counts["maskable"] > 200_000
    assert counts["special_selected"] == 0 and counts["over_limit"] == 0
    assert abs(counts["selected"] / counts["maskable"] - 0.15) < 0.005
    selected = counts["selected"]
    assert abs(counts["mask"] / selected - 0.8) < 0.01
    assert abs(counts["same"] / selected - 0.1) < 0.01  # (+ the rare random draw of the same token)
    assert abs((selected - counts["mask"] - counts["same"]) / selected - 0.1) < 0.01


def test_masking_rate_is_a_setting_and_max_predictions_caps(wiki):
    tokenizer = wiki.tokenizer()
    replacements = replacement_vocabulary(tokenizer.vocab_size, tokenizer.special_ids)
    batch = next(_batches(wiki, 1))
    maskable = (~batch.special_tokens_mask).sum()
    out = mask_tokens(batch.input_ids, batch.special_tokens_mask, mask_id=tokenizer.mask_id,
                      replacement_ids=replacements, settings=MaskingSettings(rate=0.4, max_predictions=1000),
                      generator=torch.Generator().manual_seed(1))
    assert abs(int(out.masked_positions.sum()) / int(maskable) - 0.4) < 0.02
    capped = mask_tokens(batch.input_ids, batch.special_tokens_mask, mask_id=tokenizer.mask_id,
                         replacement_ids=replacements, settings=MaskingSettings(rate=0.4, max_predictions=7),
                         generator=torch.Generator().manual_seed(1))
    assert int(capped.masked_positions.sum(1).max()) == 7


def test_whole_word_masking_selects_every_piece_of_a_word(wiki):
    tokenizer = wiki.tokenizer()
    continuation = continuation_table(tokenizer.vocab())
    replacements = replacement_vocabulary(tokenizer.vocab_size, tokenizer.special_ids)
    selected = total = 0
    for batch in _batches(wiki, 4):
        out = mask_tokens(batch.input_ids, batch.special_tokens_mask, mask_id=tokenizer.mask_id,
                          replacement_ids=replacements, settings=MaskingSettings(whole_word=True),
                          generator=torch.Generator().manual_seed(2), continuation=continuation)
        sel, ids = out.masked_positions, batch.input_ids
        maskable = ~batch.special_tokens_mask
        is_cont = continuation[ids] & maskable
        is_cont[:, 1:] &= maskable[:, :-1]  # a "##" piece right after [SEP] starts its own (trimmed) word
        # A "##" piece is selected exactly when the token before it (same word) is.
        assert torch.equal(sel[:, 1:][is_cont[:, 1:]], sel[:, :-1][is_cont[:, 1:]])
        assert not bool((sel & batch.special_tokens_mask).any())
        selected += int(sel.sum())
        total += int(maskable.sum())
    assert 0.14 < selected / total < 0.155
