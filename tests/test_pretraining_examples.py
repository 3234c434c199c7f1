"""`bertforge pretraining-examples`: the in-memory shard equals what `prepare` writes, the printed example
tells the truth about the pair and the corruption, and the 80/10/10 shares on real Wikipedia text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge.analysis import pretraining_examples as shown
from bertforge.cli import main
from bertforge.data.shards import prepare_corpus
from bertforge.tokenizer import BertTokenizer


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return BertTokenizer.from_pretrained(minilm_dir)


def test_in_memory_shard_equals_prepared_shard(shared_data, tokenizer, tmp_path):
    corpus = [shared_data / "wikipedia" / "wiki_AA.txt.gz"]
    memory = shown.corpus_shard(corpus, tokenizer, max_documents=12)
    prepared = next(prepare_corpus(corpus, tmp_path / "p", tokenizer, heldout_every=0, max_documents=12,
                                   progress=False).shards("train"))
    assert memory.num_documents == prepared.num_documents == 12
    for part in ("tokens", "sentences", "documents"):
        np.testing.assert_array_equal(getattr(memory, part), np.asarray(getattr(prepared, part)), err_msg=part)


def test_printed_examples_and_shares_on_wikipedia(shared_data, minilm_dir, capsys):
    main(["pretraining-examples", "--files", json.dumps([str(shared_data / "wikipedia" / "wiki_AA.txt.gz")]),
          "--vocab", str(minilm_dir), "--examples", "2", "--max-documents", "60", "--count-examples", "1500"])
    out = capsys.readouterr().out
    assert out.count("--- example") == 2 and "what the model sees:" in out and "[MASK]" in out
    assert "IsNext: B follows A in its document" in out or "NotNext: B comes from another document" in out
    shares = shown.run([shared_data / "wikipedia" / "wiki_AA.txt.gz"], vocab=str(minilm_dir), examples=0,
                       max_documents=60, count_examples=1500)
    assert shares["examples"] == 1500
    assert shares["chosen"] == pytest.approx(0.15, abs=0.005)  # BERT §3.1
    assert shares["mask"] == pytest.approx(0.80, abs=0.015)
    assert shares["random"] == pytest.approx(0.10, abs=0.01)
    assert shares["kept"] == pytest.approx(0.10, abs=0.01)
    assert shares["is_next"] == pytest.approx(0.5, abs=0.05)


def test_corruption_kinds_read_the_masked_batch(tokenizer):
    """Golden: one row where position 1 became [MASK], 2 another token, 3 was chosen and kept."""
    import torch

    from bertforge.data.masking import IGNORE_INDEX, MaskedBatch
    from bertforge.data.pretraining import PreTrainingBatch

    ids = torch.tensor([[tokenizer.cls_id, 2000, 2001, 2002, 2003, tokenizer.sep_id]])
    corrupted = torch.tensor([[tokenizer.cls_id, tokenizer.mask_id, 3000, 2002, 2003, tokenizer.sep_id]])
    labels = torch.tensor([[IGNORE_INDEX, 2000, 2001, 2002, IGNORE_INDEX, IGNORE_INDEX]])
    batch = PreTrainingBatch(ids, torch.zeros_like(ids), torch.ones_like(ids), ids == -1, torch.tensor([1]))
    masked = MaskedBatch(corrupted, labels, labels != IGNORE_INDEX)
    assert shown.corruption_kinds(batch, masked, tokenizer.mask_id).tolist() == [[0, 1, 2, 3, 0, 0]]
    text = shown.describe(tokenizer, batch, masked, 0)
    assert text.startswith("NotNext: B comes from another document")
    names = [tokenizer.id_to_token(i) for i in (2000, 2001, 2002)]
    assert f"3 targets: {names[0]}→[MASK], {names[1]}→{tokenizer.id_to_token(3000)} (random), " \
           f"{names[2]}→{names[2]} (kept)" in text
