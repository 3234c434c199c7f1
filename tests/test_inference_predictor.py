"""The fast predictor: packed (unpadded) forward == padded forward within 1e-5 for every attention mode,
token-budget batching, input order, and the int8 path's measured closeness on the real checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertforge.heads import BertForSequenceClassification
from bertforge.inference.embed import embed_texts
from bertforge.inference.predictor import Predictor, quantize_int8, token_budget_batches
from bertforge.inference.tiny import tiny_config, tiny_tokenizer
from bertforge.model import BertModel
from bertforge.model.packed import pack, packed_forward, packed_positions


@pytest.fixture(scope="module")
def tiny_model() -> BertModel:
    torch.manual_seed(0)
    return BertModel(tiny_config(101)).eval()


def _padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, seqs))
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask


def test_packed_positions() -> None:
    _, cu = pack([[1, 2, 3], [4], [5, 6]])
    assert cu.tolist() == [0, 3, 4, 6]
    assert packed_positions(cu).tolist() == [0, 1, 2, 0, 0, 1]


@pytest.mark.parametrize("attention", ["padded", "nested", "block"])
def test_packed_forward_equals_padded_forward(tiny_model: BertModel, attention: str) -> None:
    gen = torch.Generator().manual_seed(1)
    lengths = [13, 1, 7, 29, 7, 2]
    seqs = [torch.randint(5, 101, (n,), generator=gen).tolist() for n in lengths]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    ids, mask = _padded(seqs)
    type_ids, _ = _padded(types)
    flat, cu = pack(seqs)
    flat_types, _ = pack(types)
    with torch.inference_mode():
        ref = tiny_model(ids, mask, type_ids, output_hidden_states=True)
        out = packed_forward(tiny_model, flat, cu, flat_types, attention=attention, output_hidden_states=True)
    real = mask.bool()
    assert out.sequence_output.shape == (sum(lengths), 96)
    assert (out.sequence_output - ref.sequence_output[real]).abs().max() < 1e-5
    assert (out.pooled_output - ref.pooled_output).abs().max() < 1e-5
    for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert (mine - theirs[real]).abs().max() < 1e-5
    with torch.inference_mode():
        first = packed_forward(tiny_model, flat, cu, flat_types, attention=attention, first_token_only=True)
    assert first.sequence_output.shape == (len(lengths), 96)
    assert first.cu_seqlens.tolist() == list(range(len(lengths) + 1))
    assert (first.sequence_output - ref.sequence_output[:, 0]).abs().max() < 1e-5
    assert (first.pooled_output - ref.pooled_output).abs().max() < 1e-5


def test_packed_forward_refuses_training_mode(tiny_model: BertModel) -> None:
    flat, cu = pack([[5, 6]])
    tiny_model.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            packed_forward(tiny_model, flat, cu)
    finally:
        tiny_model.eval()


def test_token_budget_batches_cover_everything_within_budget() -> None:
    lengths = [5, 50, 3, 3, 40, 7, 200, 1, 9, 9, 9]
    batches = token_budget_batches(lengths, max_tokens=100, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert batches[0] == [6]  # longer than the budget: alone


def test_predictor_classifier_matches_plain_forward(tmp_path) -> None:
    tok = tiny_tokenizer(tmp_path)
    torch.manual_seed(2)
    model = BertForSequenceClassification(tiny_config(tok.vocab_size), num_labels=3).eval()
    texts = ["john played the guitar in paris", "good", "the movie was great , i love it !", "bad film"]
    pairs = ["who played ?", "a", "b c", "what"]
    outs = {}
    for mode in ("packed", "padded"):
        pred = Predictor(model, tok, mode=mode, max_tokens=24, max_batch=2)
        got = [None] * len(texts)
        with torch.inference_mode():
            for batch in pred.run(pred.tokenize(texts, pairs)):
                for row, i in enumerate(batch.indices):
                    got[i] = model.classifier(batch.pooled_output[row])
        outs[mode] = torch.stack(got)
    with torch.inference_mode():
        ref = model(**tok.encode(texts, pairs, padding="longest").tensors()).logits
    assert (outs["packed"] - ref).abs().max() < 1e-5
    assert (outs["padded"] - ref).abs().max() < 1e-5


def _sst2(shared_data, n: int) -> list[str]:
    lines = (shared_data / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:n]]


def test_real_checkpoint_packed_embeddings_equal_padded(minilm_dir, shared_data) -> None:
    from bertforge.checkpoint import load_model
    from bertforge.tokenizer import BertTokenizer

    model, tok = load_model(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)
    texts = _sst2(shared_data, 48)
    padded = embed_texts(model, tok, texts, predictor=Predictor(model, tok, mode="padded", max_batch=16)).vectors
    packed = embed_texts(model, tok, texts,
                         predictor=Predictor(model, tok, max_tokens=1024)).vectors
    assert np.abs(packed - padded).max() < 1e-5


def test_int8_embeddings_stay_close(minilm_dir, shared_data) -> None:
    from bertforge.checkpoint import load_model
    from bertforge.tokenizer import BertTokenizer

    model, tok = load_model(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)
    texts = _sst2(shared_data, 32)
    fp32 = embed_texts(model, tok, texts, normalize=True).vectors
    int8 = embed_texts(quantize_int8(model), tok, texts, normalize=True).vectors
    cosine = (fp32 * int8).sum(-1)
    # Dynamic int8 changes the numbers (that is its price), but sentence vectors keep their direction.
    assert cosine.min() > 0.95 and cosine.mean() > 0.98, (cosine.min(), cosine.mean())
    assert np.abs(fp32 - int8).max() > 1e-4  # it really is a different computation
