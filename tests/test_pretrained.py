"""One way to name a model: resolve_model's rules (local folders never reach the Hub), from_pretrained /
save_pretrained round trips, the packaged name through every loader, and the tokenizer called the
transformers way. Nothing here touches the network: the Hub download is replaced by a fake."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bertforge import pretrained
from bertforge.checkpoint import CheckpointError, load_model, save_model
from bertforge.cli import main
from bertforge.config import BertConfig
from bertforge.heads import BertForQuestionAnswering, BertForSequenceClassification
from bertforge.inference.tiny import tiny_tokenizer
from bertforge.model import BertModel
from bertforge.tasks.registry import TASK_CONFIG_KEY, family
from bertforge.tokenizer import BertTokenizer, TokenizerError
from bertforge.training import finetune_evaluate, finetune_predict
from bertforge.training.finetune_evaluate import EvaluationData
from bertforge.training.finetune_loop import load_task_model
from bertforge.training.finetune_predict import PredictionData

ODD = BertConfig(vocab_size=99, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)


class FakeHub:
    """Stands in for the Hub download: records every repository asked for and answers with `answer`,
    failing the test when no answer was planned."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.answer: Path | None = None

    def download(self, repo_id: str) -> Path:
        self.asked.append(repo_id)
        if self.answer is None:
            pytest.fail(f"{repo_id!r} was looked up on the Hub")
        return self.answer


@pytest.fixture(autouse=True)
def hub(monkeypatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(pretrained, "_download", fake.download)
    return fake


def test_local_names_never_reach_the_hub(tmp_path: Path, monkeypatch, hub) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    assert pretrained.resolve_model(tmp_path / "runs") == tmp_path / "runs"
    assert pretrained.resolve_model("runs") == Path("runs")
    with pytest.raises(CheckpointError, match="weights.bin: is a file"):
        pretrained.resolve_model("weights.bin")
    for name in (str(tmp_path / "nowhere"), "./nowhere", "../up/nowhere", "~/nowhere", "a/b/c", "runs/typo",
                 "nowhere", Path("org/name")):
        with pytest.raises(CheckpointError, match="no such (folder|model directory)"):
            pretrained.resolve_model(name)
    assert hub.asked == []


def test_a_hub_id_goes_to_the_hub_through_every_loader(tmp_path: Path, monkeypatch, hub) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    tok = tiny_tokenizer(tmp_path / "tok")
    saved = BertModel(ODD.replace(vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "snapshot", tokenizer=tok)
    hub.answer = saved
    assert pretrained.resolve_model("org/name") == saved
    load_model("org/name")
    BertModel.from_pretrained("org/name")
    BertTokenizer.from_pretrained("org/name")
    assert hub.asked == ["org/name"] * 4


def test_a_fine_tuned_model_named_by_a_hub_id_evaluates_and_predicts(tmp_path: Path, monkeypatch, hub) -> None:
    """evaluate, predict and load_task_model take a fine-tuned model by folder or Hub id alike (each run
    resolves the name once), and answer the same either way."""
    monkeypatch.chdir(tmp_path)
    tok = tiny_tokenizer(tmp_path / "snapshot")
    torch.manual_seed(0)
    model = BertForSequenceClassification(ODD.replace(vocab_size=tok.vocab_size), labels=["neg", "pos"])
    task_settings = {**family("classification").settings(), "max_seq_length": 16}  # as `finetune` saves them
    saved = save_model(model, tmp_path / "snapshot", tokenizer=tok, extra_config={TASK_CONFIG_KEY: task_settings})
    (tmp_path / "dev.csv").write_text("text,label\nthe movie was good,pos\nbad film,neg\ngreat day !,pos\n",
                                      encoding="utf-8")
    by_folder = finetune_evaluate.run(saved, EvaluationData(input=Path("dev.csv")))
    finetune_predict.run(saved, Path("by_folder.csv"), PredictionData(input=Path("dev.csv")))
    assert hub.asked == []
    hub.answer = saved
    assert finetune_evaluate.run("org/name", EvaluationData(input=Path("dev.csv"))) == by_folder
    main(["predict", "--model", "org/name", "--input", "dev.csv", "--output", "by_hub_id.csv"])
    assert Path("by_hub_id.csv").read_text(encoding="utf-8") == Path("by_folder.csv").read_text(encoding="utf-8")
    again, task = load_task_model("org/name")
    assert again.labels == ["neg", "pos"] and task.name == "classification"
    assert hub.asked == ["org/name"] * 3


def test_from_pretrained_save_pretrained_round_trip(tmp_path: Path) -> None:
    tok = tiny_tokenizer(tmp_path / "tok")
    config = ODD.replace(vocab_size=tok.vocab_size)
    batch = tok(["the movie was great", "bad"], ["good ?", "a b c"], padding=True, return_tensors="pt")
    torch.manual_seed(1)
    for cls, kwargs, read in ((BertModel, {}, lambda out: out.sequence_output),
                              (BertForSequenceClassification, {"labels": ["neg", "neu", "pos"]}, lambda o: o.logits),
                              (BertForQuestionAnswering, {}, lambda out: out.start_logits)):
        model = cls(config, **kwargs).eval()
        folder = model.save_pretrained(tmp_path / cls.__name__, tokenizer=tok)
        again = cls.from_pretrained(folder)
        assert type(again) is cls and not again.training
        with torch.inference_mode():
            assert torch.equal(read(model(**batch)), read(again(**batch)))
    assert BertForSequenceClassification.from_pretrained(str(tmp_path / "BertForSequenceClassification")).labels \
        == ["neg", "neu", "pos"]
    assert BertTokenizer.from_pretrained(tmp_path / "BertModel").vocab() == tok.vocab()


def test_the_packaged_name_loads_everywhere(minilm_dir: Path) -> None:
    by_name, by_path = load_model("all-minilm-l6-v2"), load_model(minilm_dir)
    tok = BertTokenizer.from_pretrained("all-minilm-l6-v2")
    batch = tok(["a packaged model", "by its name"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = by_path(**batch).pooled_output
        assert torch.equal(by_name(**batch).pooled_output, expected)
        assert torch.equal(BertModel.from_pretrained("All-MiniLM-L6-v2")(**batch).pooled_output, expected)
    # Found by its name, then refused for what it is: not a fine-tuned model.
    with pytest.raises(CheckpointError, match="bertforge_task"):
        load_task_model("all-minilm-l6-v2")


def test_tokenizer_call_equals_transformers(minilm_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    theirs = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    ours = BertTokenizer.from_pretrained(minilm_dir)
    texts = ["The quick brown fox jumps over the lazy dog.", "A", "Café déjà vu — naïve résumé!",
             "unaffable tokenization of [MASK] words"]
    pairs = ["Is it quick?", "B", "What is it?", "a longer second text that gets truncated before the first one"]
    calls = [
        ((texts,), {"padding": True, "return_tensors": "pt"}),
        ((texts, pairs), {"padding": True, "truncation": True, "max_length": 12, "return_tensors": "pt"}),
        ((texts, pairs), {"padding": "max_length", "truncation": "only_second", "max_length": 20}),
        ((texts, pairs), {"padding": "longest", "truncation": "longest_first", "max_length": 9,
                          "return_tensors": "np"}),
        ((texts[0],), {}),
        ((texts[0], pairs[0]), {"return_tensors": "pt"}),
        ((texts,), {}),
    ]
    for args, kwargs in calls:
        mine, ref = ours(*args, **kwargs), theirs(*args, **kwargs)
        assert list(mine) == list(ref), kwargs
        for key in ref:
            a, b = mine[key], ref[key]
            if kwargs.get("return_tensors") == "pt":
                assert a.dtype == b.dtype and torch.equal(a, b), (kwargs, key)
            elif kwargs.get("return_tensors") == "np":
                assert a.dtype == b.dtype and (a == b).all(), (kwargs, key)
            else:
                assert a == b, (kwargs, key)
    batch = ours(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, batch["input_ids"]) and batch.encoding.word_ids[0][1] == 0
    with pytest.raises(TokenizerError, match="pass padding=True"):
        ours(texts, return_tensors="pt")
    with pytest.raises(TokenizerError, match="padding must be"):
        ours(texts, padding="yes")


def test_save_pretrained_is_what_transformers_reads(tmp_path: Path, minilm_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ours = BertTokenizer.from_pretrained(minilm_dir)
    folder = ours.save_pretrained(tmp_path / "tok")
    theirs = transformers.BertTokenizerFast.from_pretrained(str(folder))
    text = ["Saved and read back by transformers."]
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
