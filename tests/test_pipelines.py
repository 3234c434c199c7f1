"""Pipelines on tiny random models saved and loaded like real checkpoints: fill-mask and classify agree
with the plain padded forward pass; ner and qa find answers planted in the weights (`tiny.plant_tokens`),
with exact character spans, merged sub-tokens and sliding windows; the CLI commands print the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.checkpoint import save_model
from bertforge.cli import main
from bertforge.errors import OptionError
from bertforge.heads import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.inference import pipelines
from bertforge.inference.pipelines import PipelineError, load_pipeline
from bertforge.inference.tiny import build, plant_tokens, tiny_tokenizer
from bertforge.tasks import TASK_CONFIG_KEY


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("mlm")
    build(BertForMaskedLM, directory, seed=3)
    return directory


def test_fill_mask_matches_padded_forward(mlm_dir: Path) -> None:
    loaded = load_pipeline(mlm_dir, max_tokens=16)
    assert loaded.tasks == ("fill-mask", "embed")
    texts = ["john [MASK] the guitar .", "[MASK] is the capital of [MASK] !", "good [MASK]"]
    got = pipelines.fill_mask(loaded.predictor, texts, top_k=3)
    model, tok = loaded.predictor.model, loaded.predictor.tokenizer
    with torch.inference_mode():
        enc = tok.encode(texts, padding="longest")
        logits = model(**enc.tensors()).mlm_logits  # [B, T, V]
    for i, text_result in enumerate(got):
        positions = np.flatnonzero(enc.input_ids[i] == tok.mask_id)
        assert len(text_result) == len(positions)
        for pos, top in zip(positions, text_result, strict=True):
            probs = logits[i, pos].softmax(-1)
            values, ids = probs.topk(3)
            assert [t["token_id"] for t in top] == ids.tolist()
            assert [t["token"] for t in top] == [tok.id_to_token(j) for j in ids.tolist()]
            np.testing.assert_allclose([t["score"] for t in top], values.tolist(), atol=1e-6)
    with pytest.raises(PipelineError, match="no \\[MASK\\]"):
        pipelines.fill_mask(loaded.predictor, ["no mask here"])
    with pytest.raises(PipelineError, match="classify needs"):
        pipelines.classify(loaded.predictor, ["x"])


def test_classify_labels_and_probabilities(tmp_path: Path) -> None:
    model = build(BertForSequenceClassification, tmp_path, seed=4, labels=["negative", "positive", "neutral"])
    loaded = load_pipeline(tmp_path, max_tokens=20, max_batch=2)
    texts = ["good movie", "bad film , i hate it", "the day was new"]
    got = pipelines.classify(loaded.predictor, texts)
    with torch.inference_mode():
        probs = model(**loaded.predictor.tokenizer.encode(texts, padding="longest").tensors()).logits.softmax(-1)
    for result, p in zip(got, probs, strict=True):
        assert set(result["scores"]) == {"negative", "positive", "neutral"}
        np.testing.assert_allclose(list(result["scores"].values()), p.tolist(), atol=1e-5)
        assert result["label"] == ["negative", "positive", "neutral"][int(p.argmax())]
        assert result["score"] == pytest.approx(float(p.max()), abs=1e-5)


def test_multi_label_scores_are_sigmoids_here_and_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    labels = ["sports", "politics", "music"]
    model = build(BertForSequenceClassification, tmp_path, seed=4, labels=labels,
                  problem_type="multi_label_classification")
    assert json.loads((tmp_path / "config.json").read_text())["problem_type"] == "multi_label_classification"
    loaded = load_pipeline(tmp_path)
    assert loaded.predictor.model.problem_type == "multi_label_classification"  # kept through the reload
    texts = ["good movie", "bad film , i hate it", "the day was new"]
    with torch.inference_mode():
        sigmoid = model(**loaded.predictor.tokenizer.encode(texts, padding="longest").tensors()).logits.sigmoid()
    assert max(abs(float(row.sum()) - 1.0) for row in sigmoid) > 0.1  # a softmax would sum to 1: not one here
    ours = pipelines.classify(loaded.predictor, texts)
    theirs = transformers.pipeline("text-classification", model=str(tmp_path), top_k=None)(texts)
    for mine, their, expected in zip(ours, theirs, sigmoid.tolist(), strict=True):
        np.testing.assert_allclose([mine["scores"][label] for label in labels], expected, atol=1e-5)
        np.testing.assert_allclose([{d["label"]: d["score"] for d in their}[label] for label in labels], expected,
                                   atol=1e-5)
        assert mine["label"] == their[0]["label"] == labels[int(np.argmax(expected))]


def test_ner_merges_subtokens_with_character_spans(tmp_path: Path) -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    model = build(BertForTokenClassification, tmp_path, seed=5, labels=labels)
    tok = tiny_tokenizer(tmp_path)
    ids = tok.token_to_id
    plant_tokens(model, model.classifier, {1: [ids("john")], 2: [ids("smith")], 3: [ids("paris"), ids("london")]},
                 default_bias=40.0)
    save_model(model, tmp_path, tokenizer=tok)
    loaded = load_pipeline(tmp_path)
    text = "Johnson and John  Smith went to Paris , then London"
    assert tok.tokenize("Johnson") == ["john", "##son"]  # one word, two sub-tokens
    entities = pipelines.ner(loaded.predictor, [text, "the day"])
    assert entities[1] == []
    got = [(e["entity"], e["text"], e["start"], e["end"]) for e in entities[0]]
    assert got == [
        ("PER", "Johnson", 0, 7),  # first sub-token decides, the span covers the whole word
        ("PER", "John  Smith", 12, 23),  # B-PER I-PER merged, original spacing kept
        ("LOC", "Paris", 32, 37),
        ("LOC", "London", 45, 51),
    ]
    assert all(0.5 < e["score"] <= 1.0 for e in entities[0])


def save_planted_qa(directory: Path, task_settings: dict | None = None) -> Path:
    """A random QA model whose answers start at "paris" and end at "france", saved with its tokenizer (and with
    `task_settings` where given, as `bertforge finetune` saves them)."""
    model = build(BertForQuestionAnswering, directory, seed=6)
    tok = tiny_tokenizer(directory)
    plant_tokens(model, model.span, {0: [tok.token_to_id("paris")], 1: [tok.token_to_id("france")]})
    save_model(model, directory, tokenizer=tok,
               extra_config={TASK_CONFIG_KEY: task_settings} if task_settings is not None else None)
    return directory


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    return save_planted_qa(tmp_path_factory.mktemp("qa"))


def test_qa_finds_the_answer_beyond_the_first_window(qa_dir: Path) -> None:
    loaded = load_pipeline(qa_dir)
    filler = "the river was new and good . " * 12  # 84 tokens before the answer
    context = filler + "The capital is Paris of France , a city ."
    question = "what is the capital ?"
    n_context = len(loaded.predictor.tokenizer.tokenize(context))
    assert n_context > 48  # longer than one window below
    got = pipelines.qa(loaded.predictor, [question, question], [context, "london is a city"], max_length=48,
                       stride=16)
    start = context.index("Paris")
    assert got[0]["answer"] == "Paris of France"
    assert (got[0]["start"], got[0]["end"]) == (start, start + len("Paris of France"))
    assert got[0]["score"] > 0.5
    assert got[1]["score"] < got[0]["score"]
    # One window big enough for everything finds the same span with the same score.
    whole = pipelines.qa(loaded.predictor, [question], [context], max_length=128)[0]
    assert whole["answer"] == "Paris of France"


# What `bertforge finetune` saves beside a SQuAD model: windows of 48 tokens every 16, answers of 2 tokens at most.
SAVED_QA = {"task": "squad", "doc_stride": 16, "max_query_length": 64, "max_answer_length": 2, "n_best_size": 20,
            "null_score_threshold": 0.0, "max_seq_length": 48}
CAPITAL = "the river was new and good . " * 12 + "The capital is Paris of France , a city ."


@pytest.fixture(scope="module")
def finetuned_qa_dir(tmp_path_factory) -> Path:
    return save_planted_qa(tmp_path_factory.mktemp("finetuned_qa"), SAVED_QA)


def test_qa_pipeline_defaults_to_the_saved_settings(finetuned_qa_dir: Path) -> None:
    """The planted answer "Paris of France" is 3 tokens: too long for the saved limit of 2 unless asked."""
    loaded = load_pipeline(finetuned_qa_dir)
    assert loaded.predictor.task_settings == SAVED_QA
    question = "what is the capital ?"
    got = pipelines.qa(loaded.predictor, [question], [CAPITAL])[0]
    assert got["answer"] and len(loaded.predictor.tokenizer.tokenize(got["answer"])) <= 2
    assert got == pipelines.qa(loaded.predictor, [question], [CAPITAL], max_length=48, stride=16,
                               max_answer_length=2)[0]
    explicit = pipelines.qa(loaded.predictor, [question], [CAPITAL], max_answer_length=30)[0]
    assert explicit["answer"] == "Paris of France"
    # The saved 48-token windows leave no room beside a 50-token question; an explicit length does.
    long_question = " ".join(["what"] * 50)
    with pytest.raises(OptionError, match="maximum length of 48 tokens"):
        pipelines.qa(loaded.predictor, [long_question], [CAPITAL])
    assert pipelines.qa(loaded.predictor, [long_question], [CAPITAL], max_length=128)


def test_cli_qa_defaults_to_the_saved_settings(finetuned_qa_dir: Path, capsys) -> None:
    args = ["qa", "--model", str(finetuned_qa_dir), "--question", "what is the capital ?", "--context", CAPITAL]
    main(args)
    short = json.loads(capsys.readouterr().out)[0]["answer"]
    assert short and short != "Paris of France" and len(short.split()) <= 2
    main([*args, "--max-answer-length", "5"])
    assert json.loads(capsys.readouterr().out)[0]["answer"] == "Paris of France"


def test_embed_pipeline_equals_embed_texts(mlm_dir: Path) -> None:
    from bertforge.inference.embed import embed_texts

    loaded = load_pipeline(mlm_dir, max_tokens=12)
    texts = ["john played", "the guitar was good !", "a"]
    got = pipelines.embed(loaded.predictor, texts, normalize=True)
    ref = embed_texts(loaded.predictor.encoder, loaded.predictor.tokenizer, texts, normalize=True, batch_size=1)
    assert np.abs(got - ref.vectors).max() < 1e-5


def test_cli_commands(mlm_dir: Path, qa_dir: Path, tmp_path: Path, capsys) -> None:
    main(["fill-mask", "--model", str(mlm_dir), "--text", "john [MASK] the guitar .", "--top_k", "2"])
    out = json.loads(capsys.readouterr().out)
    expected = pipelines.fill_mask(load_pipeline(mlm_dir).predictor, ["john [MASK] the guitar ."], top_k=2)
    assert [t["token"] for t in out[0][0]] == [t["token"] for t in expected[0][0]]
    context = "The capital is Paris of France ."
    main(["qa", "--model", str(qa_dir), "--max-length", "128", "--question", "what is the capital ?",
          "--context", context])
    out = json.loads(capsys.readouterr().out)
    assert out[0]["answer"] == "Paris of France"


def test_cli_classify_and_ner_write_json_lines(tmp_path: Path, capsys) -> None:
    cls_dir, ner_dir = tmp_path / "cls", tmp_path / "ner"
    build(BertForSequenceClassification, cls_dir, seed=8, labels=["neg", "pos"])
    build(BertForTokenClassification, ner_dir, seed=9, labels=["O", "B-PER", "I-PER"])
    texts = tmp_path / "texts.txt"
    texts.write_text("good movie\njohn smith played\n", encoding="utf-8")
    main(["classify", "--model", str(cls_dir), "--input", str(texts), "--output", str(tmp_path / "c.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    expected = pipelines.classify(load_pipeline(cls_dir).predictor, ["good movie", "john smith played"])
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert rows[0]["score"] == pytest.approx(expected[0]["score"], abs=1e-6)
    assert "wrote 2 results" in capsys.readouterr().out
    main(["ner", "--model", str(ner_dir), "--text", '["john smith played", "the day"]'])
    out = json.loads(capsys.readouterr().out)
    assert out == pipelines.ner(load_pipeline(ner_dir).predictor, ["john smith played", "the day"])


@pytest.mark.parametrize(("command", "head", "labels", "texts"), [
    ("classify", BertForSequenceClassification, {"labels": ["neg", "pos"]}, ["--text", "good movie"]),
    ("ner", BertForTokenClassification, {"labels": ["O", "B-PER"]}, ["--text", "john smith"]),
    ("qa", BertForQuestionAnswering, {}, ["--question", "who ?", "--context", "john smith"]),
])
def test_cli_refuses_a_max_length_beyond_the_position_table(command, head, labels, texts, tmp_path: Path,
                                                            capsys) -> None:
    build(head, tmp_path, **labels)  # the tiny config: 128 positions
    with pytest.raises(SystemExit) as stopped:
        main([command, "--model", str(tmp_path), "--max-length", "129", *texts])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"bertforge: error: --max-length 129: longer than the 128 positions of "
                                       f"{tmp_path} (max_position_embeddings); use at most 128\n")


# 6 × 7 = 42 tokens: longer than the 16 a model below was fine-tuned with
LONG = " ".join(["john played the guitar in paris ."] * 6)


def test_classify_defaults_to_the_saved_max_length(tmp_path: Path, capsys) -> None:
    """A classifier fine-tuned with --max-length 16 reads the first 16 tokens of a long text through the pipeline,
    the CLI and the service; an explicit --max-length wins."""
    server = pytest.importorskip("bertforge.inference.server", reason="pydantic (the 'serve' extra)")
    model = build(BertForSequenceClassification, tmp_path, seed=11, labels=["neg", "pos", "neutral"])
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # a random head barely tells inputs apart; make it decisive
    save_model(model, tmp_path, tokenizer=tiny_tokenizer(tmp_path),
               extra_config={TASK_CONFIG_KEY: {"task": "classification", "max_seq_length": 16}})
    loaded = load_pipeline(tmp_path)
    tok = loaded.predictor.tokenizer
    assert len(tok.tokenize(LONG)) == 42 and loaded.predictor.max_length == 128

    def probabilities(max_length: int) -> list[float]:
        with torch.inference_mode():
            enc = tok.encode([LONG], max_length=max_length, padding="longest")
            return model(**enc.tensors()).logits.softmax(-1)[0].tolist()

    # 0.004 apart: far beyond the 1e-5 the comparisons below allow
    assert max(abs(a - b) for a, b in zip(probabilities(16), probabilities(64), strict=True)) > 1e-3
    got = pipelines.classify(loaded.predictor, [LONG])[0]
    np.testing.assert_allclose(list(got["scores"].values()), probabilities(16), atol=1e-5)
    explicit = pipelines.classify(loaded.predictor, [LONG], max_length=64)[0]
    np.testing.assert_allclose(list(explicit["scores"].values()), probabilities(64), atol=1e-5)
    assert server._run_batch(loaded, ("classify", False), [(LONG, None)]) == [got]
    main(["classify", "--model", str(tmp_path), "--text", LONG])
    assert json.loads(capsys.readouterr().out) == [got]
    main(["classify", "--model", str(tmp_path), "--text", LONG, "--max-length", "64"])
    assert json.loads(capsys.readouterr().out) == [explicit]


# a long text whose windows differ: the start alone classifies otherwise than the average of all windows
MIXED = " ".join(["john played the guitar in paris ."] * 2 + ["bad film , i hate it ."] * 4)


def test_classify_defaults_to_the_saved_sliding_window(tmp_path: Path, capsys) -> None:
    """A classifier fine-tuned with --long-text sliding_window --stride 8 --max-length 16 reads a long text in
    windows whose logits are averaged, through the pipeline, the CLI and the service, as `predict` reads it (the
    task family built from the saved settings); an explicit long_text wins."""
    from bertforge.tasks.classification import TextExample
    from bertforge.tasks.registry import family

    server = pytest.importorskip("bertforge.inference.server", reason="pydantic (the 'serve' extra)")
    model = build(BertForSequenceClassification, tmp_path, seed=14, labels=["neg", "pos", "neutral"])
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # a random head barely tells inputs apart; make it decisive
    saved = {"task": "classification", "long_text": "sliding_window", "doc_stride": 8, "max_seq_length": 16}
    save_model(model, tmp_path, tokenizer=tiny_tokenizer(tmp_path), extra_config={TASK_CONFIG_KEY: saved})
    loaded = load_pipeline(tmp_path)
    tok = loaded.predictor.tokenizer
    task = family("classification", labels=["neg", "pos", "neutral"], long_text="sliding_window", doc_stride=8)
    features = task.features([TextExample(MIXED)], tok, max_seq_length=16)
    assert len(features) == 5  # windows of 14 tokens starting every 8
    with torch.inference_mode():
        mean_logits = torch.stack([model(torch.tensor([f.input_ids])).logits[0] for f in features]).mean(0)
        truncated = model(**tok.encode([MIXED], max_length=16, padding="longest").tensors()).logits.softmax(-1)[0]
    windowed = mean_logits.softmax(-1).tolist()
    assert max(abs(a - b) for a, b in zip(windowed, truncated.tolist(), strict=True)) > 1e-3

    got = pipelines.classify(loaded.predictor, [MIXED])[0]
    np.testing.assert_allclose(list(got["scores"].values()), windowed, atol=1e-5)
    explicit = pipelines.classify(loaded.predictor, [MIXED], long_text="truncate")[0]
    np.testing.assert_allclose(list(explicit["scores"].values()), truncated.tolist(), atol=1e-5)
    assert server._run_batch(loaded, ("classify", False), [(MIXED, None)]) == [got]
    main(["classify", "--model", str(tmp_path), "--text", MIXED])
    assert json.loads(capsys.readouterr().out) == [got]
    main(["classify", "--model", str(tmp_path), "--text", MIXED, "--long-text", "truncate"])
    assert json.loads(capsys.readouterr().out) == [explicit]
    with pytest.raises(PipelineError, match="sliding windows read single texts"):
        pipelines.classify(loaded.predictor, [MIXED], ["a pair"])


def test_ner_defaults_to_the_saved_max_length(tmp_path: Path, monkeypatch, capsys) -> None:
    """A tagger fine-tuned with --max-length 16 sees a long text in windows of at most 16 tokens, through the
    pipeline, the CLI and the service; an explicit --max-length wins."""
    from bertforge.inference.predictor import Predictor

    server = pytest.importorskip("bertforge.inference.server", reason="pydantic (the 'serve' extra)")
    model = build(BertForTokenClassification, tmp_path, seed=12, labels=["O", "B-PER", "I-PER", "B-LOC"])
    save_model(model, tmp_path, tokenizer=tiny_tokenizer(tmp_path),
               extra_config={TASK_CONFIG_KEY: {"task": "ner", "max_seq_length": 16}})
    windows: list[int] = []  # the length of every sequence the model is given
    run = Predictor.run

    def recording_run(self, enc, **kwargs):
        windows.extend(len(ids) for ids in enc.input_ids)
        return run(self, enc, **kwargs)

    monkeypatch.setattr(Predictor, "run", recording_run)
    loaded = load_pipeline(tmp_path)
    got = pipelines.ner(loaded.predictor, [LONG])
    assert len(windows) >= 3 and max(windows) <= 16
    windows.clear()
    pipelines.ner(loaded.predictor, [LONG], max_length=64)
    assert windows == [42 + 2]  # [CLS] 42 tokens [SEP]: one window when asked for 64
    windows.clear()
    assert server._run_batch(loaded, ("ner",), [LONG]) == got and max(windows) <= 16
    windows.clear()
    main(["ner", "--model", str(tmp_path), "--text", LONG])
    assert json.loads(capsys.readouterr().out) == got and max(windows) <= 16
    windows.clear()
    main(["ner", "--model", str(tmp_path), "--text", LONG, "--max-length", "64"])
    assert windows == [42 + 2]


def test_int8_pipeline_stays_close(tmp_path: Path) -> None:
    build(BertForSequenceClassification, tmp_path, seed=10, labels=["a", "b", "c"])
    texts = ["good movie", "bad film , i hate it", "the day was new", "john played the guitar in paris"]
    fp32 = pipelines.classify(load_pipeline(tmp_path).predictor, texts)
    int8 = pipelines.classify(load_pipeline(tmp_path, precision="int8").predictor, texts)
    for a, b in zip(fp32, int8, strict=True):
        diffs = [abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]]
        assert 0 < max(diffs) < 0.02  # different numbers, same answer
        assert a["label"] == b["label"]
