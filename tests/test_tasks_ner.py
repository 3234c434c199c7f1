"""CoNLL reading, conlleval's entity scoring (BIO and IOB1) on golden cases, first-sub-token labels and
the mapping of predictions back to words."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bertforge.data.tables import DataError
from bertforge.tasks import family
from bertforge.tasks.base import IGNORE_INDEX, Feature
from bertforge.tasks.ner import Sentence, chunks, conll_f1, read_conll, split_words
from bertforge.tokenizer import BertTokenizer
from bertforge.training.finetune_loop import TrainSettings, train


def test_chunks_bio():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG", "O"]
    # I-ORG after another type starts an entity (conlleval's lenient reading of broken BIO)
    assert chunks(tags) == {(0, 1, "PER"), (3, 3, "LOC"), (4, 4, "LOC"), (5, 6, "ORG")}


def test_chunks_iob1():
    # IOB1: I- opens an entity, B- only separates two adjacent entities of the same type
    tags = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]
    assert chunks(tags) == {(0, 1, "PER"), (2, 2, "PER"), (4, 4, "LOC"), (5, 5, "ORG")}


def test_chunks_iobes():
    assert chunks(["S-PER", "B-ORG", "I-ORG", "E-ORG", "S-ORG"]) == {(0, 0, "PER"), (1, 3, "ORG"), (4, 4, "ORG")}


def test_entities_group_words_by_tag_scheme_with_character_spans():
    task = family("ner", labels=["O", "B-X", "I-X", "Y"])  # "Y": a label without a prefix reads as I-Y
    sentence = Sentence(["aa", "bb", "cc", "dd"], None, text="aa bb  cc dd", spans=[(0, 2), (3, 5), (7, 9), (10, 12)])
    feature = Feature([2, 5, 6, 7, 8, 9, 3], [0] * 7, None, 0, {"first_pieces": [1, 2, 3, 5], "words": (0, 4)})
    # aa:B-X, bb:B-X (a new entity), cc:I-X (joins bb; its second piece is ignored), dd:Y
    logits = 10 * np.eye(4)[[0, 1, 1, 2, 3, 3, 0]]  # [T, C]
    (entities,) = task.entities([sentence], [feature], [logits])
    assert [(e["entity"], e["text"], e["start"], e["end"]) for e in entities] == [
        ("X", "aa", 0, 2), ("X", "bb  cc", 3, 9), ("Y", "dd", 10, 12)]
    confident = float(np.exp(10) / (np.exp(10) + 3))
    assert all(e["score"] == pytest.approx(confident) for e in entities)


def test_split_words_keeps_character_spans(tokenizer):
    (sentence,) = split_words(["Bob  lives in paris."], tokenizer)
    assert sentence.words == ["Bob", "lives", "in", "paris", "."]
    assert [sentence.text[a:b] for a, b in sentence.spans] == sentence.words
    assert sentence.spans[1] == (5, 10)


def test_conll_f1_golden():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    # gold entities 4 (PER, LOC, ORG, MISC[2:3]); predicted 4 (PER, ORG, ORG, MISC[2:2]); correct 2 (PER, ORG)
    result = conll_f1(gold, pred)
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["PER_f1"] == 1.0 and result["MISC_f1"] == 0.0
    assert result["ORG_precision"] == pytest.approx(0.5) and result["ORG_recall"] == 1.0


def test_entity_split_across_sentences_is_two_entities():
    # conlleval resets at blank lines: I-PER starting the second sentence is a new entity
    assert conll_f1([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])["f1"] == 1.0
    assert conll_f1([["B-PER", "I-PER"]], [["B-PER", "B-PER"]])["f1"] == 0.0


def test_reader_and_errors(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
                    "Blackburn NNP I-NP I-PER\n", encoding="utf-8")
    sentences = read_conll(path)
    assert [(s.words, s.tags) for s in sentences] == [(["EU", "rejects"], ["B-ORG", "O"]),
                                                       (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert sentences[1].source.endswith("train.txt:6")
    bad = tmp_path / "bad.txt"
    bad.write_text("EU NNP B-NP B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:2: 'rejects' has no tag column"):
        read_conll(bad)
    bad.write_text("EU NNP B-NP ORG\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:1: tag 'ORG' is not O, B-TYPE"):
        read_conll(bad)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "eu", "re", "##ject", "##s",
                                "peter", "black", "##burn", "."]) + "\n", encoding="utf-8")
    return BertTokenizer.from_vocab(vocab)


def test_labels_on_first_subtoken_and_back_to_words(tokenizer):
    task = family("ner")
    sentences = [Sentence(["EU", "rejects", "Blackburn", "."], ["B-ORG", "O", "B-PER", "O"])]
    task.fit_labels(sentences)
    assert task.label_names == ["O", "B-ORG", "B-PER"]
    (feature,) = task.features(sentences, tokenizer, max_seq_length=32, train=True)
    # [CLS] eu re ##ject ##s black ##burn . [SEP]
    assert feature.input_ids == [2, 5, 6, 7, 8, 10, 11, 12, 3]
    assert feature.label == [IGNORE_INDEX, 1, 0, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX, 0, IGNORE_INDEX]
    logits = np.zeros((9, 3))
    logits[[1, 2, 5, 7], [1, 0, 2, 0]] = 5.0
    logits[[3, 4, 6], 1] = 9.0  # continuation pieces: ignored
    assert task.word_tags(sentences, [feature], [logits]) == [["B-ORG", "O", "B-PER", "O"]]


def test_long_sentence_split_between_words_loses_nothing(tokenizer):
    task = family("ner", labels=["O", "B-PER"])
    sentence = Sentence(["Blackburn"] * 7, ["B-PER", "O"] * 3 + ["O"])
    features = task.features([sentence], tokenizer, max_seq_length=7, train=True)  # 5 pieces per window
    assert [f.extra["words"] for f in features] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    outputs = []
    for f in features:
        logits = np.zeros((len(f.input_ids), 2))
        for k, piece in enumerate(f.extra["first_pieces"]):
            logits[piece, int(sentence.tags[f.extra["words"][0] + k] == "B-PER")] = 1.0
        outputs.append(logits)
    assert task.evaluate([sentence], features, outputs)["f1"] == 1.0


def test_unseen_tag_in_evaluation_data(tokenizer):
    task = family("ner", labels=["O", "B-PER"])
    with pytest.raises(DataError, match=r"dev.txt:4: word 1 has tag 'B-LOC', unseen in training"):
        task.features([Sentence(["EU"], ["B-LOC"], "dev.txt:4")], tokenizer, max_seq_length=8)


def test_constant_token_loss_weighs_every_token_the_same(tokenizer):
    task = family("ner")
    short = [Sentence(["EU"], ["B-ORG"])] * 4  # 1 scored token each
    long = [Sentence(["EU", "rejects", "Blackburn", "."] * 2, ["B-ORG", "O", "B-PER", "O"] * 2)] * 4  # 8 each
    task.fit_labels(short + long)
    features = task.features(short + long, tokenizer, max_seq_length=32, train=True)
    assert [task.scored_tokens(f) for f in features] == [1] * 4 + [8] * 4
    labels = task.labels(features[3:5])
    logits = torch.randn(*labels["labels"].shape, 3)
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels["labels"].flatten(),
                                                  ignore_index=IGNORE_INDEX, reduction="none")
    output = SimpleNamespace(logits=logits)
    assert torch.allclose(task.loss(output, labels), per_token.sum() / 9)  # batch mean: 1 + 8 scored tokens
    assert torch.allclose(task.loss(output, labels, per_batch_tokens=4.5), per_token.sum() / 4.5)

    seen = []

    class Spy(type(task)):
        def loss(self, output, labels, **kwargs):
            seen.append(kwargs)
            return super().loss(output, labels, **kwargs)

    spy = Spy()
    spy.label_names = task.label_names
    model = torch.nn.Module()
    model.weight = torch.nn.Parameter(torch.zeros(3))
    model.forward = lambda input_ids, **_: SimpleNamespace(logits=model.weight.expand(*input_ids.shape, 3))
    for token_loss, grouped, constant in [("auto", True, True), ("auto", False, False), ("batch_mean", True, False),
                                          ("constant", False, True)]:
        seen.clear()
        train(model, spy, features, pad_id=0, progress=False,
              settings=TrainSettings(epochs=1, batch_size=2, token_loss=token_loss, group_by_length=grouped))
        # 36 scored tokens over 4 batches an epoch: each batch's sum is divided by 9, whatever it holds
        assert seen == ([{"per_batch_tokens": 9.0}] if constant else [{}]) * 4
    with pytest.raises(ValueError, match="token_loss must be auto, constant or batch_mean"):
        train(model, spy, features, pad_id=0, progress=False,
              settings=TrainSettings(epochs=1, batch_size=2, token_loss="sum"))


def test_real_conll2003(shared_data):
    counts = {name: len(read_conll(shared_data / "conll2003" / f"{name}.txt")) for name in ("train", "valid", "test")}
    assert counts == {"train": 14041, "valid": 3250, "test": 3453}
    test = read_conll(shared_data / "conll2003" / "test.txt")
    gold = [s.tags for s in test]
    assert conll_f1(gold, gold)["f1"] == 1.0
    assert sum(len(chunks(t)) for t in gold) == 5648  # the CoNLL-2003 test set's entity count
