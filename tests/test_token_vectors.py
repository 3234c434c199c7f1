"""Per-token contextual vectors: equal to a plain forward pass whatever the batching, words made of several
pieces, the "bank" example on the real model, and `bertforge embed --per-token`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.checkpoint import load_model
from bertforge.cli import main
from bertforge.errors import OptionError
from bertforge.inference.token_vectors import cosine, token_vectors, word_similarity
from bertforge.tokenizer import BertTokenizer

BANK = ["He sat on the bank of the river.", "The river bank was muddy.", "She opened an account at the bank.",
        "The bank raised its interest rates."]


@pytest.fixture(scope="module")
def real(minilm_dir: Path):
    return load_model(minilm_dir).eval(), BertTokenizer.from_pretrained(minilm_dir)


def test_vectors_are_the_forward_pass_of_each_text_alone(real) -> None:
    model, tokenizer = real
    texts = ["Unaffable tokenizers split words.", "Hi", "The bank raised its interest rates again this year."]
    result = token_vectors(model, tokenizer, texts, batch_size=2)
    with torch.inference_mode():
        for i, text in enumerate(texts):
            out = model(**tokenizer.encode(text, padding="longest").tensors(), output_hidden_states=True)
            assert result.tokens[i] == ["[CLS]", *tokenizer.tokenize(text), "[SEP]"]
            np.testing.assert_allclose(result.vectors[i], out.sequence_output[0].numpy(), atol=1e-5)
            second = token_vectors(model, tokenizer, [text], layer=2).vectors[0]
            np.testing.assert_allclose(second, out.hidden_states[2][0].numpy(), atol=1e-5)
    assert result.tokens[1] == ["[CLS]", "hi", "[SEP]"]
    pieces = result.tokens[0][1:-1]
    assert any(p.startswith("##") for p in pieces)  # "unaffable" is cut into pieces; its vector is their mean
    word = [i for i, w in enumerate(result.word_ids[0]) if w == 0]
    assert len(word) > 1
    np.testing.assert_allclose(result.word_vector(0, "unaffable"), result.vectors[0][word].mean(0), atol=1e-6)


def test_bank_means_two_things(real) -> None:
    """The same word, four contexts: the two river banks are closer to each other than to the money banks."""
    model, tokenizer = real
    result = token_vectors(model, tokenizer, BANK)
    assert all(t.count("bank") == 1 for t in result.tokens)
    similarity = word_similarity(result, "bank")
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-6)
    river, money = similarity[0, 1], similarity[2, 3]
    across = similarity[:2, 2:]
    assert river > across.max() and money > across.max()
    assert across.max() < 0.9  # one token id, clearly different vectors
    assert cosine(result.word_vector(0, "bank"), result.word_vector(0, "bank")) == pytest.approx(1.0)
    with pytest.raises(OptionError, match=r"'money' occurs 0 time\(s\) in text 0"):
        result.word_vector(0, "money")


def test_cli_embed_per_token_writes_npz(tmp_path: Path, minilm_dir: Path, real, capsys) -> None:
    model, tokenizer = real
    (tmp_path / "bank.txt").write_text("\n".join(BANK[:2]) + "\n", encoding="utf-8")
    main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "bank.txt"), "--per-token", "true",
          "--output", str(tmp_path / "bank.npz")])
    saved = np.load(tmp_path / "bank.npz")
    expected = token_vectors(model, tokenizer, BANK[:2])
    assert saved["offsets"].tolist() == [0, len(expected.tokens[0]), sum(map(len, expected.tokens))]
    assert saved["tokens"].tolist() == expected.tokens[0] + expected.tokens[1]
    np.testing.assert_allclose(saved["vectors"], np.concatenate(expected.vectors), atol=1e-5)
    assert f"wrote {len(saved['tokens'])} token vectors of 2 texts" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "bank.txt"), "--per-token", "true",
              "--output", str(tmp_path / "bank.npy")])
    assert "per-token vectors are written as .npz" in capsys.readouterr().err


def test_per_token_output_is_checked_before_the_model_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    """A wrong suffix (or several --layers) is refused in one line before any weights are read; without --output
    the vectors go to vectors.npz."""
    import bertforge.checkpoint
    from bertforge.inference.tiny import build
    from bertforge.model import BertModel

    build(BertModel, tmp_path / "model")
    (tmp_path / "texts.txt").write_text("river bank\nbank account\n", encoding="utf-8")
    load_model = bertforge.checkpoint.load_model

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(bertforge.checkpoint, "load_model", must_not_load)
    embed = ["embed", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "texts.txt"), "--per-token", "true"]
    with pytest.raises(SystemExit):
        main([*embed, "--output", str(tmp_path / "bank.npy")])
    assert capsys.readouterr().err.strip() == (
        f"bertforge: error: --output {tmp_path / 'bank.npy'}: per-token vectors are written as .npz (one array "
        f"per field); use e.g. --output {tmp_path / 'bank.npz'}")
    with pytest.raises(SystemExit):
        main([*embed, "--output", str(tmp_path / "bank.npz"), "--layers", "[-2, -1]"])
    assert "--per-token --layers [-2, -1]: give one layer" in capsys.readouterr().err
    monkeypatch.setattr(bertforge.checkpoint, "load_model", load_model)
    monkeypatch.chdir(tmp_path)
    main(embed)
    saved = np.load(tmp_path / "vectors.npz")
    assert saved["offsets"].tolist()[0] == 0 and len(saved["tokens"]) == saved["offsets"][-1] == len(saved["vectors"])


def test_per_token_precision_bf16_is_close_and_auto_follows_the_hardware(tmp_path: Path, monkeypatch) -> None:
    """bf16 vectors differ from fp32 but point the same way; `auto` is fp32 on a CPU without native bf16 and
    bf16 on one with it; `embed --per-token --precision` writes the vectors of that precision."""
    import bertforge.precision
    from bertforge.inference.tiny import build
    from bertforge.model import BertModel

    model = build(BertModel, tmp_path / "model", seed=2)
    tokenizer = BertTokenizer.from_pretrained(tmp_path / "model")
    texts = ["john played the guitar in paris", "the river was new"]
    fp32 = token_vectors(model, tokenizer, texts)
    bf16 = token_vectors(model, tokenizer, texts, precision="bf16")
    for a, b in zip(fp32.vectors, bf16.vectors, strict=True):
        assert not np.array_equal(a, b)
        assert min(cosine(x, y) for x, y in zip(a, b, strict=True)) > 0.99
    monkeypatch.setattr(bertforge.precision, "native_bf16", lambda device: False)
    auto = token_vectors(model, tokenizer, texts, precision="auto")
    assert all(np.array_equal(a, b) for a, b in zip(fp32.vectors, auto.vectors, strict=True))
    monkeypatch.setattr(bertforge.precision, "native_bf16", lambda device: True)
    auto = token_vectors(model, tokenizer, texts, precision="auto")
    assert all(np.array_equal(a, b) for a, b in zip(bf16.vectors, auto.vectors, strict=True))

    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    main(["embed", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "texts.txt"), "--per-token", "true",
          "--precision", "bf16", "--device", "cpu", "--output", str(tmp_path / "bf16.npz")])
    np.testing.assert_array_equal(np.load(tmp_path / "bf16.npz")["vectors"], np.concatenate(bf16.vectors))
