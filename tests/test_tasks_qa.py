"""SQuAD: the official normalisation and EM/F1 (v1.1 and v2.0) on golden cases, sliding windows, span
labels, n-best post-processing with max_answer_length and the null threshold, the agreed split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge.data.tables import DataError
from bertforge.tasks import family
from bertforge.tasks.qa import QAExample, _windows, normalize_answer, read_squad, squad_scores, token_f1
from bertforge.tokenizer import BertTokenizer

SQUAD_EVAL_TITLES = {"American_Broadcasting_Company", "Apollo_program", "Chloroplast", "Doctor_Who", "Genghis_Khan",
                     "Kenya", "Martin_Luther", "Newcastle_upon_Tyne", "Nikola_Tesla", "Super_Bowl_50", "Teacher",
                     "United_Methodist_Church", "Victoria_and_Albert_Museum"}


def test_normalize_answer_official_rules():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theater") == "theater"  # articles only as whole words
    assert normalize_answer("U.S.-based") == "usbased"  # punctuation removed, not replaced by spaces


def test_token_f1_golden():
    # pred "denver broncos team" vs gold "the denver broncos": common 2, P 2/3, R 2/2 -> 0.8
    assert token_f1("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    assert token_f1("", "") == 0.0  # v1.1 script: no common token -> 0
    assert token_f1("", "", version_2=True) == 1.0  # v2.0 script: empty vs empty is right
    assert token_f1("a", "x", version_2=True) == 0.0  # "a" normalises to empty


def test_squad_scores_max_over_gold_answers_and_v2_breakdown():
    examples = [QAExample("q1", "t", "?", "c", ["Denver Broncos", "the Broncos"]),
                QAExample("q2", "t", "?", "c", ["Carolina Panthers"]),
                QAExample("q3", "t", "?", "c", [], is_impossible=True)]
    predictions = {"q1": "Denver", "q2": "the Carolina Panthers!", "q3": ""}
    # q1: EM 0; F1 max(P 1 R 1/2 -> 2/3 against "Denver Broncos", 0 against "the Broncos"); q2: EM 1 F1 1
    v1 = squad_scores(examples[:2], predictions)
    assert v1 == pytest.approx({"exact_match": 50.0, "f1": 100 * (2 / 3 + 1.0) / 2})
    v2 = squad_scores(examples, predictions, version_2=True)
    assert v2["exact_match"] == pytest.approx(200 / 3) and v2["no_answer_exact"] == 100.0
    assert v2["has_answer_exact"] == 50.0


def test_windows_cover_every_token_with_stride():
    assert _windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert _windows(3, 4, 3) == [(0, 3)]
    covered = {i for start, length in _windows(1000, 100, 37) for i in range(start, start + length)}
    assert covered == set(range(1000))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    words = "who won the super bowl denver broncos beat carolina panthers in 2016 . ?".split()
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8")
    return BertTokenizer.from_vocab(vocab)


CONTEXT = "In 2016 the Denver Broncos beat the Carolina Panthers. The Denver Broncos won the Super Bowl."


def test_span_labels_decode_to_the_answer_in_every_window(tokenizer):
    task = family("squad", doc_stride=4)
    example = QAExample("q", "t", "who won?", CONTEXT, ["Carolina Panthers"], [CONTEXT.index("Carolina")])
    features = task.features([example], tokenizer, max_seq_length=14, train=True)
    assert len(features) > 2  # 18 context tokens, 9 per window, a new window every 4
    hits = 0
    for f in features:
        start, end = f.label
        if (start, end) == (0, 0):
            continue
        hits += 1
        begin, stop = f.extra["offsets"][start - f.extra["context_offset"]][0], \
            f.extra["offsets"][end - f.extra["context_offset"]][1]
        assert CONTEXT[begin:stop] == "Carolina Panthers"
    assert hits >= 1
    # every context token has exactly one window where it is "max context"
    counts = {}
    for f in features:
        for k, is_max in enumerate(f.extra["max_context"]):
            counts[f.extra["offsets"][k]] = counts.get(f.extra["offsets"][k], 0) + is_max
    assert set(counts.values()) == {1}


def test_answer_not_in_context_names_the_question(tokenizer, tmp_path):
    path = tmp_path / "train.json"
    data = {"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "q7", "question": "who?", "answers": [{"text": "Seattle Seahawks", "answer_start": 3}]}]}]}]}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    task = family("squad")
    with pytest.raises(DataError, match=r"train.json:\d+: question q7: answer 'Seattle Seahawks' does not occur"):
        task.features(task.read(path), tokenizer, max_seq_length=64, train=True)


def test_postprocessing_nbest_max_answer_length_and_null(tokenizer):
    example = QAExample("q", "t", "who won?", CONTEXT, ["Denver Broncos"])
    task = family("squad_v2", max_answer_length=3, null_score_threshold=0.0)
    (feature,) = task.features([example], tokenizer, max_seq_length=64)
    off = feature.extra["context_offset"]
    tokens = [CONTEXT[a:b] for a, b in feature.extra["offsets"]]
    first = off + tokens.index("Denver")
    start, end = np.full(len(feature.input_ids), -5.0), np.full(len(feature.input_ids), -5.0)
    start[first], end[first + 1] = 3.0, 3.0  # "Denver Broncos": score 6
    start[off], end[len(feature.input_ids) - 2] = 9.0, 9.0  # a span too long for max_answer_length
    logits = np.stack([start, end], -1)  # [T, 2], the head's layout
    assert task.predictions([example], [feature], [logits]) == {"q": "Denver Broncos"}
    logits[0, :] = 3.5  # null score 7 > best span 6: "no answer"
    assert task.predictions([example], [feature], [logits]) == {"q": ""}
    task.null_score_threshold = 2.0  # 7 - 6 = 1 <= 2: answer again
    assert task.predictions([example], [feature], [logits]) == {"q": "Denver Broncos"}
    nbest = task.nbest([example], [feature], [logits])["q"]
    assert nbest["spans"][0]["text"] == "Denver Broncos" and nbest["null_score"] == 7.0
    # Probabilities: a softmax over the n best scores and, in v2.0, the null score.
    scores = np.array([s["score"] for s in nbest["spans"]] + [7.0])
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose([s["probability"] for s in nbest["spans"]] + [nbest["null_probability"]], expected)
    (answer,) = task.answers([example], [feature], [logits])
    begin = CONTEXT.index("Denver")
    assert answer == {"answer": "Denver Broncos", "score": nbest["spans"][0]["probability"], "start": begin,
                      "end": begin + len("Denver Broncos")}


def test_agreed_split_of_real_squad(shared_data):
    examples = read_squad(shared_data / "squad" / "dev-v1.1.reconstructed.json")
    evaluation = [e for e in examples if e.title in SQUAD_EVAL_TITLES]
    assert len(examples) == 10570 and len(evaluation) == 4557 and len(examples) - len(evaluation) == 6013
    perfect = {e.id: e.answers[0] for e in evaluation}
    assert squad_scores(evaluation, perfect) == pytest.approx({"exact_match": 100.0, "f1": 100.0})
    v2 = read_squad(shared_data / "squad" / "dev-v2.0.reconstructed.json")
    assert len(v2) == 11873 and sum(e.is_impossible for e in v2) == 5945


def test_best_null_threshold_is_the_best_of_every_threshold():
    """Against brute force: official v2.0 F1 at every margin (and below all of them)."""
    from bertforge.tasks.qa import best_null_threshold

    rng = np.random.default_rng(0)
    examples, margins, answers = [], {}, {}
    for k in range(60):
        impossible = k % 3 == 0
        gold = [] if impossible else ["the red house", "red house"]
        examples.append(QAExample(f"q{k}", "t", "?", "c", gold, is_impossible=impossible))
        answers[f"q{k}"] = str(rng.choice(["red house", "a blue car", "the red house by the sea", ""]))
        margins[f"q{k}"] = float(rng.choice([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0]) + (rng.normal() if k % 2 else 0.0))
    threshold, scores = best_null_threshold(examples, margins, answers)

    def f1_at(t):
        return squad_scores(examples, {i: "" if m > t else answers[i] for i, m in margins.items()}, version_2=True)

    candidates = [min(margins.values()) - 1, *margins.values()]
    best = max(f1_at(t)["f1"] for t in candidates)
    assert scores["f1"] == pytest.approx(best) and scores == f1_at(threshold)
    assert scores["f1"] > max(f1_at(-1e9)["f1"], f1_at(1e9)["f1"])  # better than always / never answering


def test_agreed_v2_split_of_real_squad(shared_data):
    """dev-v2.0's 35 articles split by title: 21 train, 7 tune the null threshold, 7 evaluate."""
    from bertforge.tasks.qa import SQUAD_V2_EVAL_TITLES, SQUAD_V2_TUNE_TITLES, agreed_v2_split

    examples = read_squad(shared_data / "squad" / "dev-v2.0.reconstructed.json")
    train, tune, evaluation = agreed_v2_split(examples)
    titles = sorted({e.title for e in examples})
    assert len(titles) == 35 and len(train) + len(tune) + len(evaluation) == len(examples)
    assert {e.title for e in tune} == SQUAD_V2_TUNE_TITLES and {e.title for e in evaluation} == SQUAD_V2_EVAL_TITLES
    assert SQUAD_V2_EVAL_TITLES == set(titles[4::5]) and SQUAD_V2_TUNE_TITLES == set(titles[2::5])
    assert len({e.title for e in train}) == 21
    assert (len(train), len(tune), len(evaluation)) == (7090, 2295, 2488)
    for part in (train, tune, evaluation):  # each part has both kinds of question, about half unanswerable
        assert 0.4 < np.mean([e.is_impossible for e in part]) < 0.6

