"""GLUE readers (layout quirks included), own-data readers and their errors, and the GLUE metrics
against golden values and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bertforge.data.tables import DataError
from bertforge.tasks import family
from bertforge.tasks.classification import (
    f1_binary,
    matthews_corrcoef,
    pearson,
    read_glue,
    read_table,
    spearman,
)


# ----- metrics ------------------------------------------------------------------------------------
def test_matthews_golden_binary():
    # tp=3 tn=2 fp=1 fn=1: (3*2 - 1*1) / sqrt(4*4*3*3) = 5/12
    labels = [1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 0, 0]
    assert matthews_corrcoef(preds, labels) == pytest.approx(5 / 12)
    assert matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # constant prediction: defined as 0, as CoLA reports


def test_matthews_multiclass_matches_formula():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    p[:120] = y[:120]
    c = np.array([[np.sum((y == a) & (p == b)) for b in range(3)] for a in range(3)], dtype=float)
    t, q, s = c.sum(1), c.sum(0), c.sum()
    expected = (np.trace(c) * s - t @ q) / np.sqrt((s**2 - q @ q) * (s**2 - t @ t))
    assert matthews_corrcoef(p, y) == pytest.approx(expected)
    assert matthews_corrcoef(y, y) == pytest.approx(1.0)


def test_f1_golden():
    # tp=2, fp=1, fn=2 -> 2*2 / (4+1+2) = 4/7
    assert f1_binary([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0]) == pytest.approx(4 / 7)
    assert f1_binary([0, 0], [0, 0]) == 0.0


def test_pearson_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 300).astype(float)  # many ties, like STS-B's 0-5 scores
    y = x + rng.normal(0, 1.5, 300)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)


# ----- GLUE readers on synthetic files with the real quirks ---------------------------------------
def test_mrpc_header_with_byte_order_mark_and_bare_quotes(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
                    '1\t1\t2\tHe said " yes .\t" Yes , " he said .\n', encoding="utf-8")
    (example,) = read_glue("mrpc", path)
    assert (example.text, example.pair, example.label) == ('He said " yes .', '" Yes , " he said .', "1")


def test_cola_without_header(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tRode the.\n", encoding="utf-8")
    examples = read_glue("cola", path)
    assert [(e.text, e.label, e.source.rsplit(":", 1)[1]) for e in examples] == [
        ("The sailors rode the breeze.", "1", "1"), ("Rode the.", "0", "2")]


def test_glue_short_line_names_file_and_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly one field\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev.tsv:3: 2 tab-separated fields"):
        read_glue("rte", path)


def test_stsb_labels_are_numbers(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                    "0\tg\tf\ty\t0\tn\tn\tA man.\tA person.\t4.750\n", encoding="utf-8")
    task = family("stsb")
    (example,) = task.read(path)
    assert example.label == 4.75 and task.kind == "regression" and task.model_kwargs() == {"num_labels": 1}


@pytest.mark.parametrize(("folder", "task", "split", "count", "labels"), [
    ("CoLA", "cola", "dev.tsv", 1043, {"0", "1"}),  # 1,043 rows: the last line has no newline
    ("CoLA", "cola", "train.tsv", 8551, {"0", "1"}),
    ("MRPC", "mrpc", "dev.tsv", 408, {"0", "1"}),
    ("SST-2", "sst2", "dev.tsv", 872, {"0", "1"}),
    ("RTE", "rte", "dev.tsv", 277, {"entailment", "not_entailment"}),
    ("WNLI", "wnli", "dev.tsv", 71, {"0", "1"}),
    ("QNLI", "qnli", "dev.tsv", 5463, {"entailment", "not_entailment"}),
])
def test_real_glue_files(shared_data, folder, task, split, count, labels):
    examples = read_glue(task, shared_data / "glue" / folder / split)
    assert len(examples) == count
    assert {e.label for e in examples} == labels
    assert all(e.text for e in examples)


def test_real_mrpc_and_stsb_pairs(shared_data):
    mrpc = read_glue("mrpc", shared_data / "glue/MRPC/train.tsv")
    assert len(mrpc) == 3667  # the public copy lacks 1 of GLUE's 3,668 pairs (README)
    assert all(e.pair for e in mrpc)
    stsb = read_glue("stsb", shared_data / "glue/STS-B/dev.tsv")
    assert len(stsb) == 1500 and min(e.label for e in stsb) == 0.0 and max(e.label for e in stsb) == 5.0


# ----- own data -----------------------------------------------------------------------------------
def test_own_csv_labels_sorted_numerically_and_unseen_label(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,10\nbad,2\nok,2\n", encoding="utf-8")
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\nfine,10\nmeh,7\n", encoding="utf-8")
    task = family("classification")
    task.fit_labels(task.read(train))
    assert task.label_names == ["2", "10"]
    with pytest.raises(DataError, match=r"dev.csv:3: label '7' was not seen in training"):
        task.features(task.read(dev), tokenizer=None, max_seq_length=16)


def test_own_data_errors_name_file_line_and_fix(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\nhello,1\n,0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.csv:3: 'text' is empty; every row needs a text"):
        read_table(path, text_column="text", label_column="label")
    with pytest.raises(DataError, match=r"no column 'sentence'"):
        read_table(path, text_column="sentence", label_column="label")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "a", "tags": ["x", "y"]}\n{"text": "b", "tags": "y"}\n', encoding="utf-8")
    examples = read_table(jsonl, text_column="text", label_column="tags", kind="multilabel")
    assert [e.label for e in examples] == [["x", "y"], ["y"]]
    csv = tmp_path / "tags.csv"  # multi-label: an empty cell is a row with none of the labels, not an error
    csv.write_text("text,tags\na,x;y\nb,\n", encoding="utf-8")
    examples = read_table(csv, text_column="text", label_column="tags", kind="multilabel", label_separator=";")
    assert [e.label for e in examples] == [["x", "y"], []]
    with pytest.raises(DataError, match=r"tags.csv:3: empty 'tags'"):  # single-label rows still need one
        read_table(csv, text_column="text", label_column="tags")


def test_glue_metric_sets():
    scores = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # predictions 0, 1, 1, 0
    assert family("mrpc").metrics(scores, [0, 1, 0, 0]) == pytest.approx({"f1": 2 / 3, "accuracy": 0.75})
    assert set(family("cola").metrics(scores, [0, 1, 0, 0])) == {"matthews", "accuracy"}
    stsb = family("stsb").metrics(np.array([[1.0], [2.0], [3.0]]), [1.0, 2.0, 4.0])
    assert stsb["spearman"] == pytest.approx(1.0) and stsb["mse"] == pytest.approx(1 / 3)


def test_mnli_and_qqp_layouts(tmp_path):
    """No MNLI/QQP copy is available here: their GLUE headers, written out, with the fields used."""
    mnli = tmp_path / "dev_matched.tsv"
    mnli.write_text("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
                    "0\t1\t1n\tgov\t(a)\t(b)\t(A)\t(B)\tThe cat sat.\tA cat sat.\tneutral\tentailment\n",
                    encoding="utf-8")
    (example,) = read_glue("mnli", mnli)
    assert (example.text, example.pair, example.label) == ("The cat sat.", "A cat sat.", "entailment")
    assert family("mnli").model_kwargs() == {"labels": ["contradiction", "entailment", "neutral"]}
    qqp = tmp_path / "train.tsv"
    qqp.write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tHow?\tWhy?\t0\n", encoding="utf-8")
    (example,) = read_glue("qqp", qqp)
    assert (example.text, example.pair, example.label) == ("How?", "Why?", "0")


def test_multilabel_answers_give_the_label_set_at_the_threshold():
    """Each label is its own sigmoid: the answer names every label at or above the saved threshold (here
    0.6), not just the likeliest one, and predict's CSV would list the same set."""
    from bertforge.tasks.base import Feature

    multi = family("multilabel", labels=["LOC", "ORG", "PER"], threshold=0.6)
    logits = [np.array([2.0, -3.0, 0.5]), np.array([-2.0, -2.0, -2.0])]  # sigmoids .88 .05 .62 / all .12
    features = [Feature([1], [0], example=0), Feature([1], [0], example=1)]
    first, second = multi.answers([None, None], features, logits)
    assert first["labels"] == ["LOC", "PER"] and first["label"] == "LOC"
    assert first["scores"]["PER"] == pytest.approx(1 / (1 + np.exp(-0.5)))
    assert second["labels"] == [] and second["label"] == "LOC"
    assert "labels" not in family("classification", labels=["a", "b"]).answers([None], features[:1],
                                                                             [np.array([0.0, 1.0])])[0]
