"""Feature-based NER (BERT Table 7) on a tiny random encoder: the layer combinations are the right tensors,
the encoder stays frozen, and a tagger on frozen features learns a tag that depends on the word, scored
through the same first-sub-token mapping as fine-tuning."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_encoder

from bertforge.analysis import feature_based
from bertforge.analysis.feature_based import (
    FeatureSettings,
    FeatureTagger,
    ScalarMix,
    TaggerSettings,
    combine_layers,
    extract_hidden_states,
    strategy,
    train_tagger,
)
from bertforge.checkpoint import load_model
from bertforge.data.tables import DataError
from bertforge.tasks.ner import TokenClassification
from bertforge.tokenizer import BertTokenizer

# "black ##burn" and "wood ##s" are two-piece surnames whose first piece is also a plain word ("black", "wood"):
# only the piece after it tells them apart, so the tag must be read at the right position.
PIECES = ["peter", "anna", "john", "black", "##burn", "wood", "##s", "smith", "the", "a", "cat", "saw", "in",
          "house", "red", "met", "."]
FIRST_NAMES = ["Peter", "Anna", "John"]
SURNAMES = ["Blackburn", "Woods", "Smith"]
FILLER = ["the", "a", "cat", "saw", "in", "house", "red", "met", "black", "wood"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 4-layer BERT (H=24, odd FFN width) with a WordPiece vocabulary, saved in HF format."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny"), PIECES, hidden_size=24, num_layers=4)


def conll_sentences(n: int, seed: int) -> str:
    """Random sentences in which a first name is B-PER and a following surname I-PER; all else is O."""
    rng = random.Random(seed)
    blocks = []
    for _ in range(n):
        lines = [f"{rng.choice(FILLER)} X X O" for _ in range(rng.randint(1, 3))]
        lines.append(f"{rng.choice(FIRST_NAMES)} X X B-PER")
        if rng.random() < 0.6:
            lines.append(f"{rng.choice(SURNAMES)} X X I-PER")
        lines += [f"{rng.choice(FILLER)} X X O" for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.3:  # a surname after a plain word is no entity: only a first name starts one
            lines += [f"{rng.choice(FILLER)} X X O", f"{rng.choice(SURNAMES)} X X O"]
        blocks.append("\n".join([*lines, ". X X O"]))
    return "-DOCSTART- -X- -X- O\n\n" + "\n\n".join(blocks) + "\n"


def test_scalar_mix_and_concat_are_the_layers():
    torch.manual_seed(0)
    hidden_states = tuple(torch.randn(3, 5, 8) for _ in range(7))  # embeddings + 6 layers, [B, T, H] each
    plan = strategy("weighted_sum_all", 6)
    assert plan.layers == (1, 2, 3, 4, 5, 6)
    stacked = torch.stack([hidden_states[i] for i in plan.layers], 1)  # [B, K, T, H]
    mixed = combine_layers(stacked, "weighted_sum", ScalarMix(len(plan.layers)))
    torch.testing.assert_close(mixed, torch.stack(hidden_states[1:]).mean(0))  # uniform weights, gamma 1

    mix = ScalarMix(2)
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([0.0, torch.log(torch.tensor(3.0))]))  # softmax = 1/4, 3/4
        mix.gamma.fill_(2.0)
    two = torch.stack(hidden_states[5:], 1)
    torch.testing.assert_close(mix(two), 2.0 * (0.25 * hidden_states[5] + 0.75 * hidden_states[6]))

    plan = strategy("concat_last4", 6)
    assert plan.layers == (3, 4, 5, 6) and strategy("second_to_last", 6).layers == (5,)
    concat = combine_layers(torch.stack([hidden_states[i] for i in plan.layers], 1), "concat")
    assert concat.shape == (3, 5, 4 * 8)
    torch.testing.assert_close(concat, torch.cat(hidden_states[-4:], dim=-1))  # h_3 | h_4 | h_5 | h_6 per token
    with pytest.raises(feature_based.FeatureBasedError, match="at least 4 layers"):
        strategy("concat_last4", 2)


def test_encoder_is_frozen_and_only_the_tagger_learns(tiny_model, tmp_path):
    (tmp_path / "train.txt").write_text(conll_sentences(40, seed=1), encoding="utf-8")
    encoder = load_model(tiny_model)
    tokenizer = BertTokenizer.from_pretrained(tiny_model)
    encoder.train()  # extraction must switch dropout off itself
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    task = TokenClassification()
    sentences = task.read(tmp_path / "train.txt")
    task.fit_labels(sentences)
    features = task.features(sentences, tokenizer, max_seq_length=32, train=True)
    states = extract_hidden_states(encoder, features, pad_id=tokenizer.pad_id, dtype=torch.float32)
    assert not encoder.training and all(not p.requires_grad for p in encoder.parameters())
    assert len(states) == len(features) and states[3].shape == (5, features[3].length, 24)
    with torch.no_grad():  # the cached states are the encoder's own, at each feature's own positions
        alone = encoder(torch.tensor([features[3].input_ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(states[3], torch.stack(alone)[:, 0], atol=1e-5, rtol=1e-5)  # [N, T, H]

    tagger = FeatureTagger(strategy("weighted_sum_last4", 4), hidden_size=24, num_labels=len(task.label_names),
                           lstm_hidden=16)
    start = tagger.mix.scalars.detach().clone()
    train_tagger(tagger, states, features, epochs=2, batch_size=8, learning_rate=1e-2, seed=0)
    assert all(p.grad is None for p in encoder.parameters())
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)
    assert not torch.equal(tagger.mix.scalars.detach(), start)  # the layer weights are learned


def test_tagger_on_frozen_features_learns_first_subtoken_tags(tiny_model, tmp_path):
    data = tmp_path / "conll"
    data.mkdir()
    for name, n, seed in (("train", 300, 1), ("valid", 40, 2), ("test", 80, 3)):
        (data / f"{name}.txt").write_text(conll_sentences(n, seed), encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(tiny_model)
    assert tokenizer.tokenize("Blackburn Woods") == ["black", "##burn", "wood", "##s"]
    bench = tmp_path / "ner_4k.json"
    bench.write_text(json.dumps({"bertforge": {"metrics": {"f1": 0.9, "precision": 0.89, "recall": 0.91}}}))
    output = tmp_path / "out" / "feature_ner.md"
    features = FeatureSettings(model=str(tiny_model), data_dir=data, max_train_examples=None)
    taggers = TaggerSettings(strategies=["embeddings", "concat_last4", "weighted_sum_all"], epochs=6,
                             batch_size=16, learning_rate=1e-2, lstm_hidden=32, dropout=0.0, seed=0)
    results = feature_based.run(features, taggers, threads=1, finetune_metrics=bench, output=output)
    scores = {r.strategy.name: r.metrics["f1"] for r in results}
    assert min(scores.values()) >= 0.95, scores
    mixed = results[2]
    assert len(mixed.mix_weights) == 4 and sum(mixed.mix_weights) == pytest.approx(1.0)
    text = output.read_text(encoding="utf-8")
    assert "| fine-tuning (all weights) |" in text and "| 90.0 | 89.0 | 91.0 | 96.4 |" in text
    assert "| concat_last4 | concat 1,2,3,4 |" in text and "| 96.1 |" in text
    rows = output.with_suffix(".csv").read_text(encoding="utf-8").splitlines()
    details = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    assert details["finetune"]["f1"] == 0.9 and details["strategies"][0]["metrics"]["PER_f1"] >= 0.95
    assert len(rows) == 1 + 1 + 3 and rows[0].startswith("strategy,layers used,test F1")


def test_read_sentences_fits_tags_on_the_training_slice_and_names_unseen_ones(tmp_path):
    (tmp_path / "train.txt").write_text(conll_sentences(20, 1), encoding="utf-8")
    (tmp_path / "test.txt").write_text(conll_sentences(5, 2) + "\nParis X X B-LOC\n", encoding="utf-8")
    task = TokenClassification()
    with pytest.raises(DataError, match=r"test\.txt: tags \['B-LOC'\] never occur in the first 20 .*--max-train"):
        feature_based.read_sentences(task, tmp_path, max_train_examples=None, eval_split="test")
    (tmp_path / "valid.txt").write_text(conll_sentences(5, 3), encoding="utf-8")
    train, valid = feature_based.read_sentences(task, tmp_path, max_train_examples=7, eval_split="valid")
    assert (len(train), len(valid)) == (7, 5)
    assert set(task.label_names) >= {t for s in train for t in s.tags} and "B-PER" in task.label_names
