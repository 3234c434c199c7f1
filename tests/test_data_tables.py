"""Table inputs beyond CSV: Parquet files, `datasets` save_to_disk folders and Dataset objects, the Hub's
GLUE and CoNLL-2003 layouts, and `--dataset name:config` (load_dataset replaced by local data: no network)."""

from __future__ import annotations

import pytest

from bertforge.data import hf_datasets
from bertforge.data.tables import DataError, read_records, read_texts
from bertforge.tasks import family
from bertforge.training.finetune import _data_files

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")
datasets = pytest.importorskip("datasets")

SST2_FEATURES = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                   "label": datasets.ClassLabel(names=["negative", "positive"])})
SST2_ROWS = {"sentence": ["a good film", "a bad plot", "hidden test row"], "idx": [0, 1, 2], "label": [1, 0, -1]}


def write_parquet(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_rows_keep_types_and_number_rows(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"text": ["x", "y"], "tags": [["a", "b"], []], "score": [0.5, 2.0]})
    rows = read_records(path, required=("text",))
    assert rows == [{"text": "x", "tags": ["a", "b"], "score": 0.5, "_line": 1},
                    {"text": "y", "tags": [], "score": 2.0, "_line": 2}]
    assert read_texts(path, text_column="text") == ["x", "y"]
    with pytest.raises(DataError, match=r"t\.parquet: no column 'label'.*--label-column"):
        read_records(path, required={"label": "--label-column"})
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        read_records(tmp_path / "bad.parquet")


def test_saved_dataset_folder_and_object_give_label_names(tmp_path):
    dataset = datasets.Dataset.from_dict(SST2_ROWS, features=SST2_FEATURES, split="validation")
    dataset.save_to_disk(str(tmp_path / "sst2"))
    expected = [{"sentence": "a good film", "idx": 0, "label": "positive", "_line": 1},
                {"sentence": "a bad plot", "idx": 1, "label": "negative", "_line": 2},
                {"sentence": "hidden test row", "idx": 2, "label": None, "_line": 3}]
    assert read_records(tmp_path / "sst2") == expected
    assert read_records(dataset) == expected
    datasets.DatasetDict({"train": dataset, "validation": dataset}).save_to_disk(str(tmp_path / "both"))
    with pytest.raises(DataError, match=r"both: holds a DatasetDict with the splits \['train', 'validation'\]; give "
                                        r"one split's folder, e.g. .*both/train"):
        read_records(tmp_path / "both")
    assert len(read_records(tmp_path / "both" / "train")) == 3


def test_glue_task_reads_the_hub_layout_in_tsv_spelling(tmp_path):
    """SST-2's Hub labels are negative/positive, its TSV's 0/1; MNLI's Hub order differs from the sorted TSV names."""
    sst2 = datasets.Dataset.from_dict(SST2_ROWS, features=SST2_FEATURES)
    examples = family("sst2").read(sst2)
    assert [(e.text, e.label) for e in examples] == [("a good film", "1"), ("a bad plot", "0"),
                                                     ("hidden test row", None)]
    mnli = write_parquet(tmp_path / "mnli.parquet", {"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"],
                                                     "label": [0, 1, 2]})  # a Hub parquet file keeps the indices
    got = [(e.text, e.pair, e.label) for e in family("mnli").read(mnli)]
    assert got == [("p1", "h1", "entailment"), ("p2", "h2", "neutral"), ("p3", "h3", "contradiction")]
    stsb = write_parquet(tmp_path / "stsb.parquet", {"sentence1": ["a"], "sentence2": ["b"], "label": [3.8]})
    assert family("stsb").read(stsb)[0].label == pytest.approx(3.8)
    wrong = write_parquet(tmp_path / "wrong.parquet", {"sentence": ["a"], "label": ["maybe"]})
    with pytest.raises(DataError, match=r"wrong\.parquet:1: label 'maybe' is not one of GLUE sst2's labels"):
        family("sst2").read(wrong)


def test_ner_reads_the_hub_conll_layout(tmp_path):
    tags = datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC"]))
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tags})
    conll = datasets.Dataset.from_dict({"tokens": [["Bob", "Smith", "lives", "in", "Paris"], ["Hi"]],
                                        "ner_tags": [[1, 2, 0, 0, 3], [0]]}, features=features)
    conll.save_to_disk(str(tmp_path / "conll"))
    sentences = family("ner").read(tmp_path / "conll")
    assert [(s.words, s.tags) for s in sentences] == [(["Bob", "Smith", "lives", "in", "Paris"],
                                                       ["B-PER", "I-PER", "O", "O", "B-LOC"]), (["Hi"], ["O"])]
    ragged = write_parquet(tmp_path / "ragged.parquet", {"tokens": [["a", "b"]], "ner_tags": [["O"]]})
    with pytest.raises(DataError, match=r"ragged\.parquet:1: 2 words but 1 tags"):
        family("ner").read(ragged)


def test_squad_reads_the_hub_layout(tmp_path):
    rows = {"id": ["a", "b"], "title": ["Paris", "Rome"], "context": ["Paris is in France.", "Rome is old."],
            "question": ["Where is Paris?", "Who built Rome?"],
            "answers": [{"text": ["France", "in France"], "answer_start": [12, 9]}, {"text": [], "answer_start": []}]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "squad"))
    examples = family("squad_v2").read(tmp_path / "squad")
    assert [(e.id, e.answers, e.answer_starts, e.is_impossible) for e in examples] == [
        ("a", ["France", "in France"], [12, 9], False), ("b", [], [], True)]
    assert [e.id for e in family("squad").read(tmp_path / "squad", titles=["Rome"])] == ["b"]


def test_hub_name_loads_train_and_validation_splits(monkeypatch):
    """`--dataset glue:sst2` is load_dataset("glue", "sst2"); here it answers with local data."""
    split = lambda name: datasets.Dataset.from_dict(SST2_ROWS, features=SST2_FEATURES, split=name)  # noqa: E731
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict({s: split(s) for s in ("train", "validation_matched", "validation_mismatched",
                                                            "test")})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    train, validation = _data_files("mnli", None, None, None, "glue:mnli")
    assert calls == [("glue", "mnli")]
    assert str(train.split) == "train"
    assert [str(v.split) for v in validation] == ["validation_matched", "validation_mismatched"]
    _, chosen = _data_files("mnli", None, "dev.tsv", None, "glue:mnli")  # --validation overrides the Hub's
    assert [str(p) for p in chosen] == ["dev.tsv"]

    def offline(name, config=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"--dataset conll2003: could not load it from the Hugging Face Hub"):
        hf_datasets.load_hub("conll2003")
    with pytest.raises(DataError, match="--dataset and --data-dir: choose one"):
        _data_files("sst2", None, None, "glue/SST-2", "glue:sst2")
