"""One task, one meaning: a QA model, an NER model and a classifier give the same answers and scores through
the CLI (`qa` / `ner` / `classify`), the HTTP service and `predict`, because all of them decode through the
task families in tasks/. The models are tiny and random with answers planted in their weights
(`tiny.plant_tokens`), saved the way `bertforge finetune` saves them (task settings in config.json)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="pip install fastapi uvicorn (the 'serve' extra)")
pytest.importorskip("uvicorn", reason="pip install fastapi uvicorn (the 'serve' extra)")
pytest.importorskip("prometheus_client", reason="pip install prometheus-client (the 'serve' extra)")

from test_server import Server  # noqa: E402

from bertforge.checkpoint import save_model  # noqa: E402
from bertforge.cli import main  # noqa: E402
from bertforge.heads import (  # noqa: E402
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.inference import pipelines  # noqa: E402
from bertforge.inference.server import create_app  # noqa: E402
from bertforge.inference.tiny import build, plant_tokens, tiny_tokenizer  # noqa: E402
from bertforge.tasks import TASK_CONFIG_KEY, family  # noqa: E402
from bertforge.tasks.ner import chunks  # noqa: E402
from bertforge.tasks.qa import examples_from_pairs  # noqa: E402
from bertforge.training import finetune_predict  # noqa: E402
from bertforge.training.finetune_loop import load_task_model, predict_outputs  # noqa: E402
from bertforge.training.finetune_predict import PredictionColumns, PredictionData  # noqa: E402

MAX_LENGTH = 128  # the tiny models' position table; the HTTP service's windows are capped to it
FILLER = "the river was new and good . " * 20  # 140 tokens: the answer lies in the second window


def save_as_finetuned(model, directory: Path, task) -> Path:
    """What `bertforge finetune` writes: the model, its tokenizer and the family's settings."""
    save_model(model, directory, tokenizer=tiny_tokenizer(directory),
               extra_config={TASK_CONFIG_KEY: {**task.settings(), "max_seq_length": MAX_LENGTH}})
    return directory


def cli_json(capsys, *args: str) -> list:
    capsys.readouterr()
    main([str(a) for a in args])
    return json.loads(capsys.readouterr().out)


def http(directory: Path, path: str, body: dict) -> list:
    server = Server(create_app(pipelines.load_pipeline(directory)))
    try:
        status, answer = server.request("POST", path, body)
    finally:
        server.stop()
        server.thread.join(10)
    assert status == 200, answer
    return answer


def assert_same(a: list[dict], b: list[dict], keys: tuple[str, ...]) -> None:
    """Equal answers; scores equal to float32 rounding (the CLI and the service batch differently)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert {k: x[k] for k in keys} == {k: y[k] for k in keys}
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)


# ----- question answering -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("qa")
    model = build(BertForQuestionAnswering, directory, seed=6)
    ids = tiny_tokenizer(directory).token_to_id
    plant_tokens(model, model.span, {0: [ids("paris")], 1: [ids("france")]})
    return save_as_finetuned(model, directory, family("squad", doc_stride=128))


QUESTIONS = ["what is the capital ?", "who played ?"]
CONTEXTS = [FILLER + "The capital is Paris of France , a city .", "john played the guitar in london"]


def test_qa_cli_http_and_predict_agree(qa_dir: Path, tmp_path: Path, capsys) -> None:
    by_cli = cli_json(capsys, "qa", "--model", qa_dir, "--max-length", MAX_LENGTH, "--question", json.dumps(QUESTIONS),
                      "--context", json.dumps(CONTEXTS))
    assert by_cli[0]["answer"] == "Paris of France" and by_cli[0]["score"] > 0.9  # found in the second window
    assert CONTEXTS[0][by_cli[0]["start"] : by_cli[0]["end"]] == "Paris of France"
    by_http = http(qa_dir, "/qa", {"questions": QUESTIONS, "contexts": CONTEXTS})
    assert_same(by_cli, by_http, ("answer", "start", "end"))
    squad = {"data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": f"q{i}", "question": q, "answers": []}]}
        for i, (q, c) in enumerate(zip(QUESTIONS, CONTEXTS, strict=True))]}]}
    (tmp_path / "questions.json").write_text(json.dumps(squad), encoding="utf-8")
    finetune_predict.run(qa_dir, tmp_path / "answers.json", PredictionData(input=tmp_path / "questions.json"))
    by_predict = json.loads((tmp_path / "answers.json").read_text(encoding="utf-8"))
    assert by_predict == {f"q{i}": a["answer"] for i, a in enumerate(by_cli)}


def test_qa_pipeline_decodes_like_evaluate_with_overlapping_windows(qa_dir: Path) -> None:
    """Windows of 48 tokens starting every 16: tokens are seen in up to three windows, and both paths read each
    token in the one that gives it the most context."""
    loaded = pipelines.load_pipeline(qa_dir)
    got = pipelines.qa(loaded.predictor, QUESTIONS, CONTEXTS, max_length=48, stride=16)
    model, task = load_task_model(qa_dir, doc_stride=16)
    examples = examples_from_pairs(QUESTIONS, CONTEXTS)
    tokenizer = loaded.predictor.tokenizer
    features = task.features(examples, tokenizer, max_seq_length=48)
    assert sum(f.example == 0 for f in features) > 5  # many overlapping windows
    expected = task.answers(examples, features, predict_outputs(model, task, features, pad_id=tokenizer.pad_id))
    assert_same(got, expected, ("answer", "start", "end"))
    assert got[0]["answer"] == "Paris of France"


# ----- named entities ---------------------------------------------------------------------------------------
NER_TEXTS = ["johnson and john smith went to paris , then london", "the day was new", "smith played in paris"]


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ner")
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    model = build(BertForTokenClassification, directory, seed=5, labels=labels)
    ids = tiny_tokenizer(directory).token_to_id
    plant_tokens(model, model.classifier, {1: [ids("john")], 2: [ids("smith")], 3: [ids("paris"), ids("london")]},
                 default_bias=40.0)
    return save_as_finetuned(model, directory, family("ner", labels=labels))


def test_ner_cli_http_and_predict_agree(ner_dir: Path, tmp_path: Path, capsys) -> None:
    by_cli = cli_json(capsys, "ner", "--model", ner_dir, "--text", json.dumps(NER_TEXTS))
    assert [(e["entity"], e["text"]) for e in by_cli[0]] == [
        ("PER", "johnson"), ("PER", "john smith"), ("LOC", "paris"), ("LOC", "london")]
    assert by_cli[1] == [] and [(e["entity"], e["text"]) for e in by_cli[2]] == [("PER", "smith"), ("LOC", "paris")]
    by_http = http(ner_dir, "/ner", {"texts": NER_TEXTS})
    for mine, theirs in zip(by_cli, by_http, strict=True):
        assert_same(mine, theirs, ("entity", "text", "start", "end"))
    conll = tmp_path / "words.txt"
    conll.write_text("\n\n".join("\n".join(text.split()) for text in NER_TEXTS) + "\n", encoding="utf-8")
    finetune_predict.run(ner_dir, tmp_path / "tags.txt", PredictionData(input=conll))
    blocks = (tmp_path / "tags.txt").read_text(encoding="utf-8").strip().split("\n\n")
    for block, entities in zip(blocks, by_cli, strict=True):
        words, tags = zip(*(line.split() for line in block.splitlines()), strict=True)
        found = [(kind, " ".join(words[a : b + 1])) for a, b, kind in sorted(chunks(tags))]
        assert found == [(e["entity"], e["text"]) for e in entities]


# ----- classification ---------------------------------------------------------------------------------------
CLASSIFY_TEXTS = ["good movie", "bad film , i hate it", "the day was new", "john played the guitar in paris"]
LABELS = ["negative", "positive", "neutral"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("classifier")
    model = build(BertForSequenceClassification, directory, seed=4, labels=LABELS)
    with torch.no_grad():  # a random [CLS] barely depends on the text: louder attention values make it
        for layer in model.bert.layers:
            layer.attention.qkv.weight[2 * model.config.hidden_size :].mul_(30)  # the value projection
            layer.attention.output.weight.mul_(30)
        model.classifier.weight.mul_(30)
    return save_as_finetuned(model, directory, family("classification", labels=LABELS))


def test_classify_cli_http_and_predict_agree(classifier_dir: Path, tmp_path: Path, capsys) -> None:
    by_cli = cli_json(capsys, "classify", "--model", classifier_dir, "--text", json.dumps(CLASSIFY_TEXTS))
    assert len({r["label"] for r in by_cli}) > 1  # a random model, but not a constant one
    by_http = http(classifier_dir, "/classify", {"texts": CLASSIFY_TEXTS})
    assert_same(by_cli, by_http, ("label",))
    for mine, theirs in zip(by_cli, by_http, strict=True):
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-5)
    table = tmp_path / "texts.csv"
    with table.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], *enumerate(CLASSIFY_TEXTS)])
    finetune_predict.run(classifier_dir, tmp_path / "labels.csv", PredictionData(input=table),
                         PredictionColumns(id_column="id"))
    with (tmp_path / "labels.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [str(i) for i in range(len(CLASSIFY_TEXTS))]
    for row, answer in zip(rows, by_cli, strict=True):
        assert row["label"] == answer["label"]
        np.testing.assert_allclose([float(row[f"prob_{label}"]) for label in LABELS],
                                   [answer["scores"][label] for label in LABELS], atol=1e-5)
