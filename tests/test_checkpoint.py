"""Hugging Face-format checkpoints: both directions for the encoder and every head layout, key prefixes,
legacy names, pytorch_model.bin, and clear errors for bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertforge import checkpoint as ckpt
from bertforge.checkpoint import CheckpointError, load_model, save_model
from bertforge.config import BertConfig
from bertforge.heads import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertforge.model import BertModel

transformers = pytest.importorskip("transformers")

ODD = BertConfig(vocab_size=99, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)


def _inputs(batch: int = 3, seq: int = 7, vocab: int = 99) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 5:] = 0
    types = torch.zeros(batch, seq, dtype=torch.long)
    types[:, 4:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, atol: float = 1e-5) -> None:
    diff = (a - b).abs()
    if mask is not None:
        diff = diff[mask]
    assert diff.max().item() < atol


def test_random_base_model_round_trips_through_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = BertModel(BertConfig.from_preset("base")).eval()
    save_model(ours, tmp_path / "ours")
    theirs = transformers.BertModel.from_pretrained(str(tmp_path / "ours"), attn_implementation="eager").eval()
    inputs = _inputs(vocab=30522, seq=16)
    real = inputs["attention_mask"].bool()
    with torch.inference_mode():
        a, b = ours(**inputs), theirs(**inputs)
    _close(a.sequence_output, b.last_hidden_state, real)
    _close(a.pooled_output, b.pooler_output)
    # ... and the reverse: a Hugging Face model saved by transformers, loaded by bertforge.
    theirs.save_pretrained(str(tmp_path / "theirs"))
    back = load_model(tmp_path / "theirs")
    with torch.inference_mode():
        c = back(**inputs)
    assert torch.equal(c.sequence_output, a.sequence_output)
    assert all(torch.equal(x, y) for x, y in zip(back.state_dict().values(), ours.state_dict().values(), strict=True))


def test_no_missing_or_unexpected_keys_in_transformers(tmp_path: Path) -> None:
    save_model(BertModel(ODD), tmp_path)
    _, info = transformers.BertModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


HEADS = [
    (BertForPreTraining, {}, "BertForPreTraining"),
    (BertForMaskedLM, {}, "BertForMaskedLM"),
    (BertForSequenceClassification, {"labels": ["neg", "neu", "pos"]}, "BertForSequenceClassification"),
    (BertForSequenceClassification, {"num_labels": 1}, "BertForSequenceClassification"),
    (BertForTokenClassification, {"labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}, "BertForTokenClassification"),
    (BertForQuestionAnswering, {}, "BertForQuestionAnswering"),
]


@pytest.mark.parametrize("cls, kwargs, hf_name", HEADS, ids=[h[2] + str(h[1])[:12] for h in HEADS])
def test_every_head_matches_transformers(tmp_path: Path, cls, kwargs, hf_name) -> None:
    torch.manual_seed(0)
    ours = cls(ODD, **kwargs).eval()
    with torch.no_grad():  # non-zero biases so that a mis-mapped bias shows
        for name, p in ours.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    save_model(ours, tmp_path)
    hf_cls = getattr(transformers, hf_name)
    theirs, info = hf_cls.from_pretrained(str(tmp_path), output_loading_info=True, attn_implementation="eager")
    theirs.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inputs = _inputs()
    real = inputs["attention_mask"].bool()
    with torch.inference_mode():
        a, b = ours(**inputs), theirs(**inputs)
    if hf_name in ("BertForPreTraining", "BertForMaskedLM"):
        logits = b.prediction_logits if hf_name == "BertForPreTraining" else b.logits
        _close(a.mlm_logits, logits, real)
        if hf_name == "BertForPreTraining":
            _close(a.nsp_logits, b.seq_relationship_logits)
        # The decoder is tied to the input embeddings in both.
        assert torch.equal(theirs.get_output_embeddings().weight, ours.bert.embeddings.word_embeddings.weight)
        # Only the masked positions are projected onto the vocabulary, in row-major order.
        with torch.inference_mode():
            sparse = ours(**inputs, masked_positions=real).mlm_logits
        _close(sparse, logits[real])
    elif hf_name == "BertForQuestionAnswering":
        _close(a.start_logits, b.start_logits, real)
        _close(a.end_logits, b.end_logits, real)
    elif hf_name == "BertForTokenClassification":
        _close(a.logits, b.logits, real)
        assert theirs.config.id2label == dict(enumerate(kwargs["labels"]))
    else:
        _close(a.logits, b.logits)
        if "labels" in kwargs:
            assert theirs.config.id2label == dict(enumerate(kwargs["labels"]))
        else:
            assert theirs.config.problem_type == "regression"
    # And back: load what transformers saves.
    theirs.save_pretrained(str(tmp_path / "back"))
    again = load_model(tmp_path / "back", cls, **({} if "labels" in kwargs else kwargs))
    assert getattr(again, "labels", None) == getattr(ours, "labels", None)
    for (k1, v1), (k2, v2) in zip(again.state_dict().items(), ours.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1


def test_multiple_choice_matches_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = BertForMultipleChoice(ODD).eval()
    save_model(ours, tmp_path)
    theirs = transformers.BertForMultipleChoice.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    flat = _inputs(batch=8)
    inputs = {k: v.view(2, 4, 7) for k, v in flat.items()}  # 2 questions × 4 choices
    with torch.inference_mode():
        _close(ours(**inputs).logits, theirs(**inputs).logits)


@pytest.mark.parametrize(("cls", "kwargs"), [(BertForSequenceClassification, {"num_labels": 3}),
                                           (BertForTokenClassification, {"num_labels": 5}),
                                           (BertForMultipleChoice, {})])
def test_classifier_dropout_travels_in_config_json(tmp_path: Path, cls, kwargs) -> None:
    """transformers' `classifier_dropout` (None: the hidden dropout) sets the dropout before the head."""
    base = ODD.replace(hidden_dropout=0.1)
    assert cls(base, **kwargs).dropout.p == 0.1
    save_model(cls(base, **kwargs), tmp_path / "default")
    assert json.loads((tmp_path / "default/config.json").read_text())["classifier_dropout"] is None
    save_model(cls(base.replace(classifier_dropout=0.3), **kwargs), tmp_path / "set")
    assert json.loads((tmp_path / "set/config.json").read_text())["classifier_dropout"] == 0.3
    theirs = getattr(transformers, cls.hf_architecture).from_pretrained(str(tmp_path / "set"))
    assert theirs.dropout.p == 0.3
    theirs.config.classifier_dropout = 0.2  # a folder written by transformers, read back here
    theirs.save_pretrained(str(tmp_path / "back"))
    again = load_model(tmp_path / "back", cls, **kwargs)
    assert again.config.classifier_dropout == 0.2 and again.dropout.p == 0.2
    assert again.bert.embeddings.dropout.p == 0.1  # the encoder keeps hidden_dropout
    with pytest.raises(ValueError, match="classifier_dropout must be in"):
        base.replace(classifier_dropout=1.0)


def test_problem_type_round_trips(tmp_path: Path) -> None:
    ours = BertForSequenceClassification(ODD, labels=["a", "b"], problem_type="multi_label_classification")
    save_model(ours, tmp_path)
    assert transformers.AutoConfig.from_pretrained(str(tmp_path)).problem_type == "multi_label_classification"
    assert load_model(tmp_path, BertForSequenceClassification).problem_type == "multi_label_classification"
    assert isinstance(load_model(tmp_path), BertModel)  # another class takes the encoder and ignores problem_type
    save_model(BertForSequenceClassification(ODD, labels=["a", "b"]), tmp_path / "single")
    assert "problem_type" not in json.loads((tmp_path / "single/config.json").read_text())
    assert load_model(tmp_path / "single", BertForSequenceClassification).problem_type is None
    with pytest.raises(ValueError, match="problem_type must be one of"):
        BertForSequenceClassification(ODD, num_labels=2, problem_type="multilabel")


def test_encoder_loads_from_any_layout(tmp_path: Path) -> None:
    """A BertModel from a pre-training checkpoint (heads ignored); a classifier from a bare encoder (head new)."""
    torch.manual_seed(0)
    pretraining = BertForPreTraining(ODD)
    save_model(pretraining, tmp_path / "pt")
    encoder = load_model(tmp_path / "pt")
    assert torch.equal(encoder.embeddings.word_embeddings.weight, pretraining.bert.embeddings.word_embeddings.weight)
    keys = load_file(tmp_path / "pt/model.safetensors")
    assert all(k.startswith(("bert.", "cls.")) for k in keys)
    save_model(encoder, tmp_path / "bare")
    assert not any(k.startswith("bert.") for k in load_file(tmp_path / "bare/model.safetensors"))
    classifier = load_model(tmp_path / "bare", BertForSequenceClassification, num_labels=2)
    assert torch.equal(classifier.bert.pooler.dense.weight, encoder.pooler.dense.weight)


def test_sinusoidal_model_saves_a_table_transformers_can_use(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = BertModel(ODD.replace(position_embedding_type="sinusoidal")).eval()
    save_model(ours, tmp_path)
    theirs = transformers.BertModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    inputs = _inputs()
    with torch.inference_mode():
        _close(ours(**inputs).sequence_output, theirs(**inputs).last_hidden_state, inputs["attention_mask"].bool())
    again = load_model(tmp_path)
    assert again.config.position_embedding_type == "sinusoidal"


def test_pytorch_bin_and_legacy_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = BertModel(ODD)
    save_model(ours, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    # TensorFlow-converted checkpoints: LayerNorm gamma/beta, a position_ids buffer, a pickle file.
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    legacy["embeddings.position_ids"] = torch.arange(64)[None]
    (tmp_path / "model.safetensors").unlink()
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    again = load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values(), strict=True))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    save_model(BertModel(ODD), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(1), "payload": _Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot be read"):
        load_model(tmp_path)


class _Payload:  # an arbitrary object: weights_only loading must never unpickle it
    pass


def test_bad_checkpoints_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_model(tmp_path)
    save_model(BertModel(ODD), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="no weights file; expected one of model.safetensors, pytorch_model.bin"):
        load_model(tmp_path)

    save_model(BertModel(ODD), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"encoder.layer.0.intermediate.dense.weight: checkpoint has \(37, 36\), "
                                              r"the model expects \(40, 36\)"):
        load_model(tmp_path)
    config["intermediate_size"] = 37
    config["vocab_size"] = 98
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"word_embeddings.weight: checkpoint has \(99, 36\)"):
        load_model(tmp_path)
    config["vocab_size"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(120)))
    with pytest.raises(CheckpointError, match="120 tokens, more than the 99 rows of the embedding matrix"):
        load_model(tmp_path)
    (tmp_path / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(50)))  # another model's vocabulary
    with pytest.raises(CheckpointError, match="50 tokens, fewer than the 99 rows of the embedding matrix"):
        load_model(tmp_path)
    (tmp_path / "vocab.txt").unlink()

    state = load_file(weights)
    del state["encoder.layer.1.output.dense.weight"]
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="1 encoder weights are missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 36,\n "oops"}')
    with pytest.raises(CheckpointError, match=r"config.json:2: invalid JSON"):
        load_model(tmp_path)


def test_unsupported_configs_are_refused(tmp_path: Path) -> None:
    save_model(BertModel(ODD), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for field, value, message in [("hidden_act", "relu", "hidden_act 'relu' is not supported"),
                                  ("model_type", "roberta", "BERT checkpoints only"),
                                  ("num_attention_heads", 5, "divisible by num_heads")]:
        broken = {**config, field: value}
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path)


def test_save_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """A crash while writing the weights leaves the previous checkpoint intact and no stray files."""
    torch.manual_seed(0)
    first = BertModel(ODD)
    save_model(first, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crash(state, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(BertModel(ODD), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_save_model_writes_any_tokenizer_through_save_pretrained(tmp_path: Path) -> None:
    """save_model asks the tokenizer for `save_pretrained` alone, the one save name bertforge's tokenizer and
    transformers' share, so a transformers tokenizer is saved beside the weights too."""
    from bertforge.tokenizer import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"]
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab/vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "vocab"))
    save_model(BertModel(ODD.replace(vocab_size=len(vocab))), tmp_path / "model", tokenizer=theirs)
    assert BertTokenizer.from_pretrained(tmp_path / "model").vocab() == vocab


def test_real_checkpoint_layout(minilm_dir: Path) -> None:
    model = load_model(minilm_dir)
    assert model.config.num_layers == 6 and model.config.hidden_size == 384 and model.config.num_heads == 12
    assert model.num_parameters() == 22_713_216


def test_atomic_writes_get_a_normal_file_mode(tmp_path: Path) -> None:
    import os

    from bertforge.files import write_text_atomic

    mask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "table.md", "| a |\n")
        assert (tmp_path / "table.md").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    finally:
        os.umask(mask)
