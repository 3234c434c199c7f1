"""End-to-end fine-tuning on tiny random models: learning, the saved model loading in `transformers` with
identical outputs, predict in input order, seeds, early stopping, sliding windows, every task family; gradient
accumulation, learning-rate schedules and curves.png."""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
import torch
from conftest import save_tiny_encoder

from bertforge.checkpoint import load_model
from bertforge.cli import call_job, main
from bertforge.config import BertConfig
from bertforge.data.tables import DataError
from bertforge.errors import OptionError
from bertforge.heads import BertForSequenceClassification
from bertforge.tokenizer import BertTokenizer
from bertforge.training import finetune, finetune_evaluate, finetune_loop, finetune_predict


def run_finetune(output_dir, **options):
    """finetune.run with its options named as on the command line (the settings groups are built from them)."""
    return call_job(finetune.run, {"output_dir": output_dir, **options})


def run_evaluate(model, input=None, **options):
    """finetune_evaluate.run with its options named as on the command line (flat, like run_finetune)."""
    return call_job(finetune_evaluate.run, {"model": model, "input": input, **options})


def run_predict(model, input, output, **options):
    """finetune_predict.run with its options named as on the command line."""
    return call_job(finetune_predict.run, {"model": model, "input": input, "output": output, **options})


WORDS = ["good", "bad", "movie", "plot", "the", "was", "very", "film", "actor", "story", "bob", "alice", "paris",
         "london", "lives", "in", "who", "where", "does", "?", "."]
FAST = {"epochs": 4, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0, "max_length": 32,
        "progress": False, "tensorboard": False}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer BERT (H=32, odd FFN width) with a word-level vocabulary, saved in HF format."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny"), WORDS)


def sentiment_rows(n: int, seed: int, length: int = 5) -> list[dict]:
    rng = random.Random(seed)
    filler = ["movie", "plot", "the", "was", "very", "film", "actor", "story"]
    rows = []
    for i in range(n):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(filler) for _ in range(length)]
        words.insert(rng.randrange(len(words) + 1), "good" if label == "pos" else "bad")
        rows.append({"id": i, "text": " ".join(words), "label": label})
    return rows


def write_csv(path, rows, columns=None):
    columns = columns or list(rows[0])
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def sentiment_run(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("sentiment")
    train = write_csv(work / "train.csv", sentiment_rows(96, 1))
    dev = write_csv(work / "dev.csv", sentiment_rows(40, 2))
    out = work / "model"
    result = run_finetune(out, task="classification", model=str(tiny_model), train=train, validation=[dev],
                          seed=7, **{**FAST, "tensorboard": True})
    return work, out, result


def test_learns_and_saves_best_with_labels(sentiment_run):
    work, out, result = sentiment_run
    assert result.best_metric >= 0.95  # the keyword decides the label: a tiny model must learn it
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    assert config["bertforge_task"]["task"] == "classification"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert max(h["dev/accuracy"] for h in history) == result.best_metric
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert any((out / "tensorboard").iterdir())


def test_transformers_loads_the_model_and_predicts_the_same(sentiment_run):
    transformers = pytest.importorskip("transformers")
    work, out, _ = sentiment_run
    from bertforge.training.finetune_loop import load_task_model

    ours, task = load_task_model(out)
    theirs = transformers.BertForSequenceClassification.from_pretrained(str(out)).eval()
    assert theirs.config.id2label == {0: "neg", 1: "pos"}
    tokenizer = BertTokenizer.from_pretrained(out)
    batch = tokenizer.encode(["good movie", "the plot was very bad .", "film"], padding="longest").tensors()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=1e-4)


def test_predict_and_evaluate(sentiment_run):
    work, out, result = sentiment_run
    rows = sentiment_rows(25, 3)
    source = write_csv(work / "test.csv", rows, ["id", "text"])
    preds = run_predict(out, source, work / "preds.csv", id_column="id")
    with preds.open(encoding="utf-8") as handle:
        got = list(csv.DictReader(handle))
    assert [r["id"] for r in got] == [str(r["id"]) for r in rows]  # input order
    assert list(got[0]) == ["id", "label", "prob_neg", "prob_pos"]
    for row in got:
        assert float(row["prob_neg"]) + float(row["prob_pos"]) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == ("pos" if float(row["prob_pos"]) > 0.5 else "neg")
    assert np.mean([g["label"] == r["label"] for g, r in zip(got, rows, strict=True)]) >= 0.9
    metrics = run_evaluate(out, work / "dev.csv")
    assert metrics["accuracy"] == pytest.approx(result.best_metric)  # the kept model is the best epoch's
    bad = write_csv(work / "bad.csv", [{"id": 1, "text": "good", "label": "meh"}])
    with pytest.raises(DataError, match=r"bad.csv:2: label 'meh' was not seen in training"):
        run_evaluate(out, bad)


def write_sources(work, rows) -> dict:
    """The same rows as CSV, TSV, JSONL, Parquet, a save_to_disk folder and a `datasets.Dataset`."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    (work / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with (work / "rows.tsv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), work / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(work / "saved"))
    return {"csv": write_csv(work / "rows.csv", rows), "tsv": work / "rows.tsv", "jsonl": work / "rows.jsonl",
            "parquet": work / "rows.parquet", "saved": work / "saved",
            "dataset": datasets.Dataset.from_list(rows, split="validation")}


def hub_with(monkeypatch, splits: dict) -> list:
    """`datasets.load_dataset` answering with `splits` offline; returns the (name, config) calls made."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict({split: datasets.Dataset.from_list(rows, split=split)
                                     for split, rows in splits.items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_evaluate_and_predict_read_every_source_alike(sentiment_run, monkeypatch, capsys):
    """evaluate and predict on Parquet, save_to_disk, a Dataset and --dataset give what the CSV gives."""
    work, out, _ = sentiment_run
    rows = [{**r, "id": str(r["id"])} for r in sentiment_rows(30, 6)]
    sources = write_sources(work, rows)
    expected = run_evaluate(out, sources["csv"])
    run_predict(out, sources["csv"], work / "from_csv.csv", id_column="id")
    for kind, source in sources.items():
        assert run_evaluate(out, source) == expected, kind
        run_predict(out, source, work / f"from_{kind}.csv", id_column="id")
        assert (work / f"from_{kind}.csv").read_text() == (work / "from_csv.csv").read_text(), kind
    main(["evaluate", "--model", str(out), "--input", str(sources["parquet"]), "--output", str(work / "m.json")])
    assert json.loads((work / "m.json").read_text()) == expected
    unlabelled = [{"id": r["id"], "text": r["text"], "label": -1} for r in rows]
    calls = hub_with(monkeypatch, {"train": rows, "validation": rows, "test": unlabelled})
    assert call_job(finetune_evaluate.run, {"model": out, "dataset": "mine:sst"}) == expected
    main(["predict", "--model", str(out), "--dataset", "mine", "--id-column", "id", "--output", str(work / "t.csv")])
    assert (work / "t.csv").read_text() == (work / "from_csv.csv").read_text()
    assert calls == [("mine", "sst"), ("mine", None)]
    with pytest.raises(DataError, match=r"--dataset mine: no split 'dev'; choose one of \['test', 'train', "
                                         r"'validation'\] with --split"):
        run_evaluate(out, dataset="mine", split="dev")
    for options in ({}, {"input": sources["csv"], "dataset": "mine"}):
        with pytest.raises(OptionError, match="--input or --dataset: give one of them"):
            run_evaluate(out, **options)
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(out), "--input", str(sources["csv"])])
    assert "--output: give the file to write the predictions to" in capsys.readouterr().err


def predicted_probabilities(out, source, path, **options) -> np.ndarray:
    run_predict(out, source, path, **options)
    with path.open(encoding="utf-8") as handle:
        return np.array([[float(r["prob_neg"]), float(r["prob_pos"])] for r in csv.DictReader(handle)])


def test_evaluate_and_predict_precision(sentiment_run, monkeypatch):
    """--precision as on finetune: bf16 runs the model's bf16 copy and agrees with fp32; auto is fp32 on a CPU
    without native bf16 and bf16 on one with it; a bad value is refused before the model loads."""
    import bertforge.precision

    work, out, _ = sentiment_run
    source = write_csv(work / "precision.csv", sentiment_rows(40, 8))
    fp32 = predicted_probabilities(out, source, work / "fp32.csv", device="cpu")
    main(["predict", "--model", str(out), "--input", str(source), "--output", str(work / "bf16.csv"),
          "--device", "cpu", "--precision", "bf16"])
    bf16 = predicted_probabilities(out, source, work / "bf16-api.csv", device="cpu", precision="bf16")
    assert (work / "bf16.csv").read_text() == (work / "bf16-api.csv").read_text()
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    np.testing.assert_allclose(bf16, fp32, atol=0.02)
    assert (bf16.argmax(1) == fp32.argmax(1)).all()
    monkeypatch.setattr(bertforge.precision, "native_bf16", lambda device="cpu": False)
    auto = predicted_probabilities(out, source, work / "auto.csv", device="cpu", precision="auto")
    np.testing.assert_array_equal(auto, fp32)
    monkeypatch.setattr(bertforge.precision, "native_bf16", lambda device="cpu": True)
    auto = predicted_probabilities(out, source, work / "auto.csv", device="cpu", precision="auto")
    np.testing.assert_array_equal(auto, bf16)
    assert run_evaluate(out, source, precision="bf16")["accuracy"] == \
        run_evaluate(out, source)["accuracy"]
    int8 = predicted_probabilities(out, source, work / "int8.csv", precision="int8")
    assert not np.array_equal(int8, fp32) and (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
    with pytest.raises(OptionError, match="--precision fp8: choose one of"):
        run_evaluate(work / "no-such-model", source, precision="fp8")


def test_evaluate_and_predict_int8_precision_is_the_smoothed_one(sentiment_run, monkeypatch):
    """--precision int8 on evaluate and predict runs the inference paths' int8 model (inference.int8.smoothed_int8,
    calibrated with the model's tokenizer): encoder Linears smoothed, then quantised; not a plain quantised copy."""
    from bertforge.inference.int8 import SmoothedLinear, smoothed_int8

    work, out, _ = sentiment_run
    source = write_csv(work / "int8-smoothed.csv", sentiment_rows(12, 9))
    scored = []
    predict_outputs = finetune_loop.predict_outputs

    def spy(model, *args, **kwargs):
        scored.append(model)
        return predict_outputs(model, *args, **kwargs)

    monkeypatch.setattr(finetune_loop, "predict_outputs", spy)
    run_evaluate(out, source, precision="int8")
    run_predict(out, source, work / "int8-smoothed-predictions.csv", precision="int8")
    assert len(scored) == 2
    tokenizer = BertTokenizer.from_pretrained(out)
    reference = smoothed_int8(finetune_loop.load_task_model(out)[0], tokenizer)
    batch = tokenizer.encode(["good movie", "the plot was very bad ."], padding="longest").tensors()
    with torch.no_grad():
        expected = reference(**batch).logits
        for model in scored:
            smoothed = [m for m in model.modules() if isinstance(m, SmoothedLinear)]
            assert smoothed and all("quantized" in type(m.linear).__module__ for m in smoothed)
            torch.testing.assert_close(model(**batch).logits, expected, atol=0, rtol=0)


def test_seed_reproducible_and_early_stopping(tiny_model, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(32, 4))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(16, 5))
    settings = {**FAST, "epochs": 2, "model": str(tiny_model), "train": train, "validation": [dev]}
    a = run_finetune(tmp_path / "a", seed=3, **settings)
    b = run_finetune(tmp_path / "b", seed=3, **settings)
    c = run_finetune(tmp_path / "c", seed=4, **settings)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]
    frozen = run_finetune(tmp_path / "d", seed=3, early_stopping_patience=1, **{**settings, "epochs": 6,
                                                                               "learning_rate": 0.0})
    assert len(frozen.history) == 2  # nothing improves after epoch 1: stop after one stale epoch


def test_sliding_window_reads_what_truncation_cuts(tiny_model, tmp_path):
    rng = random.Random(0)

    def rows(n):  # the deciding word ends a 20-word text; the window is 16 tokens
        out = []
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = [rng.choice(["movie", "plot", "the", "film"]) for _ in range(20)]
            out.append({"text": " ".join(words + ["good" if label == "pos" else "bad"]), "label": label})
        return out

    train, dev = write_csv(tmp_path / "train.csv", rows(64)), write_csv(tmp_path / "dev.csv", rows(32))
    # No dropout: at this size and learning rate whether 6 epochs find the last word depended on the dropout draws.
    settings = {**FAST, "epochs": 6, "max_length": 16, "model": str(tiny_model), "train": train,
                "validation": [dev], "dropout": 0.0}
    cut = run_finetune(tmp_path / "cut", **settings)
    windowed = run_finetune(tmp_path / "win", long_text="sliding_window", stride=7, **settings)
    assert cut.best_metric <= 0.75  # the label is invisible after truncation: near chance
    assert windowed.best_metric >= 0.9


def test_parquet_and_datasets_inputs_train_exactly_like_csv(tiny_model, tmp_path):
    """The same rows as CSV, Parquet and `datasets.Dataset` objects: the same run, to the last digit."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    rows = [{**r, "id": str(r["id"])} for r in sentiment_rows(80, seed=3)]
    common = {**FAST, "epochs": 2, "model": str(tiny_model)}
    from_csv = run_finetune(tmp_path / "csv", train=write_csv(tmp_path / "train.csv", rows[:64]),
                            validation=[write_csv(tmp_path / "dev.csv", rows[64:])], **common)
    pq.write_table(pa.Table.from_pylist(rows[:64]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[64:]), tmp_path / "dev.parquet")
    from_parquet = run_finetune(tmp_path / "pq", train=tmp_path / "train.parquet",
                                validation=[tmp_path / "dev.parquet"], **common)
    dev = datasets.Dataset.from_list(rows[64:], split="validation")
    from_dataset = run_finetune(tmp_path / "ds", train=datasets.Dataset.from_list(rows[:64], split="train"),
                                validation=dev, **common)
    losses = [[h["train_loss"] for h in r.history] for r in (from_csv, from_parquet, from_dataset)]
    assert len(losses[0]) == 2 and losses[0] == losses[1] == losses[2]
    assert from_parquet.best_metric == from_csv.best_metric == from_dataset.best_metric
    saved = json.loads((tmp_path / "ds/finetune_config.json").read_text())
    assert (saved["train"], saved["validation"]) == ("train", ["validation"])


def test_regression_and_multilabel(tiny_model, tmp_path):
    rng = random.Random(1)
    rows = [{"text": " ".join(rng.choice(["good", "bad", "movie"]) for _ in range(6))} for _ in range(88)]
    for row in rows:
        row["score"] = row["text"].split().count("good")
        row["tags"] = ",".join(t for t in ("good", "bad") if t in row["text"].split()) or "none"
    train, dev = write_csv(tmp_path / "train.csv", rows[:64]), write_csv(tmp_path / "dev.csv", rows[64:])
    common = {**FAST, "epochs": 6, "model": str(tiny_model), "train": train, "validation": [dev]}
    reg = run_finetune(tmp_path / "reg", task="regression", label_column="score", **common)
    assert reg.best_metric >= 0.9  # Pearson of the predicted count of "good"
    assert json.loads((tmp_path / "reg/config.json").read_text())["problem_type"] == "regression"
    multi = run_finetune(tmp_path / "multi", task="multilabel", label_column="tags", **common)
    assert multi.best_metric >= 0.9  # micro F1
    assert json.loads((tmp_path / "multi/config.json").read_text())["problem_type"] == "multi_label_classification"
    run_predict(tmp_path / "multi", dev, tmp_path / "tags.csv", probabilities=False)
    with (tmp_path / "tags.csv").open(encoding="utf-8") as handle:
        got = [r["label"] for r in csv.DictReader(handle)]
    exact = np.mean([set(g.split(";")) == set(r["tags"].split(",")) for g, r in zip(got, rows[64:], strict=True)])
    assert exact == pytest.approx(run_evaluate(tmp_path / "multi", dev)["subset_accuracy"])
    assert exact >= 0.75


def test_fine_tuned_multi_label_model_gets_sigmoids_in_transformers_pipeline(tiny_model, tmp_path):
    """problem_type in the saved config.json makes transformers' pipeline score each label on its own."""
    transformers = pytest.importorskip("transformers")
    rows = [{"text": t, "tags": tags} for t, tags in [("good movie", "good"), ("bad movie", "bad"),
                                                      ("good bad movie", "good,bad"), ("the movie", "none")] * 8]
    train = write_csv(tmp_path / "train.csv", rows)
    run_finetune(tmp_path / "multi", task="multilabel", label_column="tags", model=str(tiny_model), train=train,
                 **{**FAST, "epochs": 1})
    model = load_model(tmp_path / "multi", BertForSequenceClassification).eval()
    texts = ["good movie", "bad bad film"]
    with torch.inference_mode():
        sigmoid = model(**BertTokenizer.from_pretrained(tmp_path / "multi").encode(
            texts, padding="longest").tensors()).logits.sigmoid()
    theirs = transformers.pipeline("text-classification", model=str(tmp_path / "multi"), top_k=None)(texts)
    for their, expected in zip(theirs, sigmoid.tolist(), strict=True):
        scores = {d["label"]: d["score"] for d in their}
        np.testing.assert_allclose([scores[label] for label in model.labels], expected, atol=1e-5)
        assert abs(sum(scores.values()) - 1.0) > 1e-3  # not a softmax


def test_classifier_dropout_is_honoured_and_saved(tiny_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = BertConfig(vocab_size=30, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=37)
    net = finetune.with_dropout(BertForSequenceClassification(config.replace(classifier_dropout=0.25), num_labels=2),
                                0.05)
    assert (net.dropout.p, net.bert.embeddings.dropout.p, net.config.classifier_dropout) == (0.25, 0.05, 0.25)
    assert finetune.with_dropout(net, 0.05, 0.0).dropout.p == 0.0  # the option beats the model's config
    assert finetune.with_dropout(BertForSequenceClassification(config, num_labels=2), 0.2).dropout.p == 0.2
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, seed=5))
    settings = {**FAST, "epochs": 1, "train": train}
    run_finetune(tmp_path / "set", model=str(tiny_model), classifier_dropout=0.3, **settings)
    saved = json.loads((tmp_path / "set/config.json").read_text())
    assert (saved["classifier_dropout"], saved["hidden_dropout_prob"]) == (0.3, 0.1)
    assert transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "set")).dropout.p == 0.3
    run_finetune(tmp_path / "again", model=str(tmp_path / "set"), **settings)  # kept from the model's config
    assert json.loads((tmp_path / "again/config.json").read_text())["classifier_dropout"] == 0.3
    with pytest.raises(OptionError, match="--classifier-dropout 1.5: must be"):
        run_finetune(tmp_path / "bad", model=str(tiny_model), classifier_dropout=1.5, **settings)


def conll(rng: random.Random, n: int) -> str:
    """n CoNLL sentences of 3 to 7 words; people and places are tagged."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        for _ in range(rng.randint(3, 7)):
            word = rng.choice(["bob", "alice", "paris", "london", "lives", "in", "the", "."])
            tag = {"bob": "B-PER", "alice": "B-PER", "paris": "B-LOC", "london": "B-LOC"}.get(word, "O")
            lines.append(f"{word} NN O {tag}")
        lines.append("")
    return "\n".join(lines)


def test_ner_end_to_end(tiny_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    rng = random.Random(2)
    (tmp_path / "train.txt").write_text(conll(rng, 80))
    (tmp_path / "valid.txt").write_text(conll(rng, 20))
    result = run_finetune(tmp_path / "ner", task="ner", model=str(tiny_model), data_dir=tmp_path, **FAST)
    assert result.best_metric >= 0.95  # entity F1
    theirs = transformers.BertForTokenClassification.from_pretrained(str(tmp_path / "ner")).eval()
    assert set(theirs.config.label2id) == {"O", "B-PER", "B-LOC"}
    from bertforge.tasks.base import collate
    from bertforge.training.finetune_loop import load_task_model

    ours, task = load_task_model(tmp_path / "ner")
    tokenizer = BertTokenizer.from_pretrained(tmp_path / "ner")
    batch = collate(task.features(task.read(tmp_path / "valid.txt")[:6], tokenizer, max_seq_length=32),
                    tokenizer.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=1e-4)
    run_predict(tmp_path / "ner", tmp_path / "valid.txt", tmp_path / "pred.txt")
    predicted = [line.split() for line in (tmp_path / "pred.txt").read_text().splitlines() if line]
    gold = [line.split() for line in (tmp_path / "valid.txt").read_text().splitlines()[2:] if line]
    assert [p[0] for p in predicted] == [g[0] for g in gold]
    assert np.mean([p[1] == g[3] for p, g in zip(predicted, gold, strict=True)]) >= 0.95


def test_multiple_choice_swag_layout(tiny_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    rng = random.Random(3)
    columns = ["video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
               "ending0", "ending1", "ending2", "ending3", "label"]
    rows = []
    for i in range(96):
        label = rng.randrange(4)
        endings = [" ".join(rng.choice(["movie", "plot", "film"]) for _ in range(3)) for _ in range(4)]
        endings[label] += " good"
        rows.append(dict(zip(columns, ["v", i, "", "the story was", "very", "gold", *endings, label], strict=True)))
    train = write_csv(tmp_path / "train.csv", rows[:64], columns)
    dev = write_csv(tmp_path / "dev.csv", rows[64:], columns)
    result = run_finetune(tmp_path / "mc", task="swag", model=str(tiny_model), train=train, validation=[dev],
                          **{**FAST, "epochs": 6})
    assert result.best_metric >= 0.9
    from bertforge.training.finetune_loop import load_task_model

    ours, task = load_task_model(tmp_path / "mc")
    theirs = transformers.BertForMultipleChoice.from_pretrained(str(tmp_path / "mc")).eval()
    tokenizer = BertTokenizer.from_pretrained(tmp_path / "mc")
    from bertforge.tasks.base import collate

    batch = collate(task.features(task.read(dev)[:5], tokenizer, max_seq_length=32), tokenizer.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=1e-4)


def test_squad_end_to_end(tiny_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    rng = random.Random(4)
    names, places = ["bob", "alice"], ["paris", "london"]

    def squad(n, prefix):
        paragraphs = []
        for i in range(n):
            who, where = rng.choice(names), rng.choice(places)
            filler = " ".join(rng.choice(["the", "film", "story"]) for _ in range(rng.randint(0, 20)))
            context = f"{filler} {who} lives in {where} ."
            qas = [{"id": f"{prefix}{i}", "question": f"where does {who} live ?",
                    "answers": [{"text": where, "answer_start": context.index(f"in {where}") + 3}]}]
            paragraphs.append({"context": context, "qas": qas})
        return {"data": [{"title": prefix, "paragraphs": paragraphs}]}

    (tmp_path / "train.json").write_text(json.dumps(squad(80, "t")))
    (tmp_path / "dev.json").write_text(json.dumps(squad(20, "d")))
    result = run_finetune(tmp_path / "qa", task="squad", model=str(tiny_model), train=tmp_path / "train.json",
                          validation=[tmp_path / "dev.json"], stride=8, **{**FAST, "epochs": 8})
    assert result.best_metric >= 90.0  # F1 in percent; contexts longer than the 32-token window included
    theirs = transformers.BertForQuestionAnswering.from_pretrained(str(tmp_path / "qa")).eval()
    from bertforge.tasks.base import collate
    from bertforge.training.finetune_loop import load_task_model

    ours, task = load_task_model(tmp_path / "qa")
    tokenizer = BertTokenizer.from_pretrained(tmp_path / "qa")
    batch = collate(task.features(task.read(tmp_path / "dev.json")[:4], tokenizer, max_seq_length=32),
                    tokenizer.pad_id)
    with torch.no_grad():
        mine, hf = ours(**batch), theirs(**batch)
    torch.testing.assert_close(mine.start_logits, hf.start_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine.end_logits, hf.end_logits, atol=1e-5, rtol=1e-4)
    run_predict(tmp_path / "qa", tmp_path / "dev.json", tmp_path / "answers.json")
    answers = json.loads((tmp_path / "answers.json").read_text())
    assert len(answers) == 20 and np.mean([a in ("paris", "london") for a in answers.values()]) >= 0.9


def test_bad_input_fails_before_training(tiny_model, tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"review": "good", "label": "pos"}, {"review": "bad", "label": "neg"}])
    with pytest.raises(DataError, match=r"train.csv: no column 'text'; the columns are \['review', 'label'\]"):
        run_finetune(tmp_path / "out", model=str(tiny_model), train=train, **FAST)
    assert not (tmp_path / "out").exists()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def varied_rows(n: int) -> list[dict]:
    """Sentiment rows of n different lengths, so that micro-batches pad to different widths."""
    return [{**sentiment_rows(1, seed=i, length=1 + 2 * i)[0], "id": i} for i in range(n)]


def saved_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize(("optimizer", "task", "token_loss"), [
    ("adamw", "classification", "auto"), ("sgd", "classification", "auto"),
    ("sgd", "ner", "batch_mean"), ("sgd", "ner", "constant")])
def test_gradient_accumulation_takes_the_whole_batch_step(tiny_model, tmp_path, monkeypatch, optimizer, task,
                                                           token_loss):
    """12 examples at batch 8: one step on 8, one on the 4 left over. With dropout 0, accumulating over 2 or 4
    micro-batches must give the weights one pass over each batch gives. AdamW's first step hardly depends on the
    gradient's scale (it divides by it), so plain SGD without clipping runs too: its step is the gradient itself,
    and a loss weighted wrongly (not divided, divided by the wrong count on the short batch, by examples where a
    token mean needs scored tokens) would move it. Examples and sentences have different lengths, so the
    micro-batches pad to different widths and hold different numbers of scored tokens."""
    if optimizer == "sgd":
        monkeypatch.setattr(finetune_loop, "build_adamw",
                            lambda model, *, lr, weight_decay: torch.optim.SGD(model.parameters(), lr=lr))
    if task == "ner":
        train = tmp_path / "train.txt"
        train.write_text(conll(random.Random(4), 12))
    else:
        train = write_csv(tmp_path / "train.csv", varied_rows(12))
    settings = {**FAST, "epochs": 1, "batch_size": 8, "dropout": 0.0, "learning_rate": 0.5 if optimizer == "sgd"
                else 1e-2, "max_grad_norm": 1e9, "max_length": 64, "seed": 5, "model": str(tiny_model), "train": train,
                "task": task, "token_loss": token_loss}
    results = {n: run_finetune(tmp_path / f"accumulate{n}", grad_accum_steps=n, **settings) for n in (1, 2, 4)}
    whole = saved_weights(tmp_path / "accumulate1")
    (start,) = [t for k, t in saved_weights(tiny_model).items() if k.endswith("word_embeddings.weight")]
    moved = (whole["bert.embeddings.word_embeddings.weight"] - start).abs().max()
    assert moved > 1e-3  # the steps moved the weights: what is compared below is not two untouched copies
    for n in (2, 4):
        accumulated = saved_weights(tmp_path / f"accumulate{n}")
        for name, tensor in whole.items():
            # atol: a thousandth of AdamW's step, which turns float noise in a near-zero gradient into ~1e-6
            torch.testing.assert_close(accumulated[name], tensor, rtol=1e-4, atol=1e-5)
        assert results[n].history[0]["train_loss"] == pytest.approx(results[1].history[0]["train_loss"], rel=1e-5)


def test_a_batch_not_divisible_by_the_accumulation_steps_is_one_line(tiny_model, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(8, 1))
    with pytest.raises(OptionError, match=r"^--batch-size 6 is not divisible by --grad-accum-steps 4;"):
        run_finetune(tmp_path / "out", model=str(tiny_model), train=train, **{**FAST, "batch_size": 6},
                     grad_accum_steps=4)
    with pytest.raises(SystemExit) as stopped:
        main(["finetune", "--model", str(tiny_model), "--train", str(train), "--output-dir", str(tmp_path / "out"),
              "--batch-size", "6", "--grad-accum-steps", "4", "--progress", "false"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("bertforge: error: --batch-size 6 is not divisible by --grad-accum-steps 4; "
                                       "choose a batch size that is a multiple of it\n")
    assert not (tmp_path / "out").exists()


def expected_multiplier(schedule: str, step: int, warmup: int, total: int) -> float:
    """The factor on the peak learning rate at optimizer step `step` (0-based), written out independently."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
            "constant_with_warmup": 1.0}[schedule]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_the_optimizer_follows_the_chosen_schedule(tiny_model, tmp_path, monkeypatch, schedule):
    """40 examples at batch 4 for one epoch: 10 steps, the first 2 (warmup ratio 0.2) warming up."""
    used: list[float] = []
    build = finetune_loop.build_adamw

    def recording(model, **options):
        optimizer = build(model, **options)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setattr(finetune_loop, "build_adamw", recording)
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40, 1))
    run_finetune(tmp_path / "out", model=str(tiny_model), train=train, schedule=schedule,
                 **{**FAST, "epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.2})
    assert used == pytest.approx([1e-3 * expected_multiplier(schedule, s, 2, 10) for s in range(10)], abs=1e-12)
    assert json.loads((tmp_path / "out/finetune_config.json").read_text())["schedule"] == schedule


def test_curves_png_plots_the_training_loss_and_the_dev_metric(sentiment_run, tiny_model, tmp_path,
                                                               spy_on_plot_curves):
    work, out, result = sentiment_run
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    drawn = spy_on_plot_curves(finetune_loop)
    train, dev = write_csv(tmp_path / "train.csv", sentiment_rows(24, 1)), write_csv(tmp_path / "dev.csv",
                                                                                     sentiment_rows(8, 2))
    run = run_finetune(tmp_path / "out", model=str(tiny_model), train=train, validation=[dev],
                       **{**FAST, "epochs": 2, "batch_size": 8})
    per_step, per_epoch = drawn["losses"]
    assert per_step.steps == [1, 2, 3, 4, 5, 6] and per_epoch.steps == [3, 6]
    assert per_epoch.values == [h["train_loss"] for h in run.history]
    assert per_epoch.values[0] == pytest.approx(sum(per_step.values[:3]) / 3)
    (dev_curve,) = drawn["scores"]
    assert dev_curve.steps == [3, 6] and dev_curve.values == [h["dev/accuracy"] for h in run.history]
    assert (tmp_path / "out/curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_train_refuses_to_run_inside_an_outer_autocast() -> None:
    # Autocast's weight cache lives until the outermost context exits: a loop inside one trains on frozen copies.
    model = BertForSequenceClassification(BertConfig.from_preset("tiny", vocab_size=50), num_labels=2)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="precision='bf16'"):
        finetune_loop.train(model, None, [], pad_id=0)


def test_a_finetuning_job_keeps_freed_memory(tiny_model, tmp_path, monkeypatch):
    """hardware.keep_freed_memory (what spares a step its page faults) is the job's to call, once it starts."""
    calls = []
    monkeypatch.setattr(finetune, "keep_freed_memory", lambda: calls.append(1) or True)
    rows = sentiment_rows(16, seed=5)
    run_finetune(tmp_path / "run", **{**FAST, "epochs": 1}, model=str(tiny_model),
                 train=write_csv(tmp_path / "train.csv", rows))
    assert calls == [1]
