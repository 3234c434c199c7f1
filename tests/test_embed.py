"""Feature extraction: poolings and layer combinations against direct computation and a
sentence-transformers-style reference; batch-size invariance; the `bertforge embed` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.checkpoint import load_model
from bertforge.cli import main
from bertforge.data.tables import DataError
from bertforge.inference.embed import embed_texts, length_sorted_batches
from bertforge.tokenizer import BertTokenizer

TEXTS = [
    "A man is playing a guitar.",
    "",
    "Stocks fell sharply on Monday after weak earnings reports from several large technology companies.",
    "Bonjour!",
    "The weather is lovely today, isn't it?",
    "word " * 300,  # longer than max_length below: truncated and reported
    "Short one.",
]


@pytest.fixture(scope="module")
def real(minilm_dir: Path):
    return load_model(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)


def test_vectors_do_not_depend_on_batch_size(real) -> None:
    model, tok = real
    reference = embed_texts(model, tok, TEXTS, batch_size=1, max_length=64).vectors
    for batch_size in (2, 3, 64):
        vectors = embed_texts(model, tok, TEXTS, batch_size=batch_size, max_length=64).vectors
        assert np.abs(vectors - reference).max() < 1e-5, batch_size


def test_poolings_match_direct_computation(real) -> None:
    model, tok = real
    texts = [t for t in TEXTS if t.strip()][:4]
    with torch.inference_mode():
        for text, mean, cls, pooled, last4 in zip(
            texts,
            embed_texts(model, tok, texts, pooling="mean").vectors,
            embed_texts(model, tok, texts, pooling="cls").vectors,
            embed_texts(model, tok, texts, pooling="pooled").vectors,
            embed_texts(model, tok, texts, pooling="mean", layers=[-4, -3, -2, -1]).vectors,
            strict=True,
        ):
            out = model(**tok.encode(text, padding="longest").tensors(), output_hidden_states=True)
            np.testing.assert_allclose(mean, out.sequence_output[0].mean(0).numpy(), atol=1e-5)
            np.testing.assert_allclose(cls, out.sequence_output[0, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(pooled, out.pooled_output[0].numpy(), atol=1e-5)
            expected = torch.cat([h[0].mean(0) for h in out.hidden_states[-4:]]).numpy()
            assert last4.shape == (4 * 384,)
            np.testing.assert_allclose(last4, expected, atol=1e-5)
    summed = embed_texts(model, tok, texts, layers=[0, -1], combine="sum").vectors
    averaged = embed_texts(model, tok, texts, layers=[0, -1], combine="mean").vectors
    np.testing.assert_allclose(summed, 2 * averaged, atol=1e-5)


def test_matches_sentence_transformers_recipe(real, minilm_dir: Path) -> None:
    """all-MiniLM-L6-v2 is used as mean pooling + L2 normalisation of transformers' BertModel output."""
    transformers = pytest.importorskip("transformers")
    model, tok = real
    texts = [t for t in TEXTS if t.strip()]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    hf = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    batch = hf_tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = hf(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1).numpy()
    ours = embed_texts(model, tok, texts, pooling="mean", normalize=True, max_length=128).vectors
    assert np.abs(ours - ref).max() < 1e-5
    # Semantics, not only numbers: related sentences are nearer than unrelated ones.
    similar = embed_texts(model, tok, ["A man plays the guitar.", "Someone is strumming a guitar.",
                                       "The stock market crashed."], normalize=True).vectors
    assert similar[0] @ similar[1] > 0.6 > similar[0] @ similar[2] + 0.3


def test_empty_and_truncated_texts_are_reported(real) -> None:
    model, tok = real
    result = embed_texts(model, tok, TEXTS, max_length=32)
    assert result.empty == [1]
    assert result.truncated == [5]
    assert result.vectors.shape == (len(TEXTS), 384)
    assert np.isfinite(result.vectors).all()


def test_bad_options(real) -> None:
    model, tok = real
    with pytest.raises(ValueError, match="layers .* out of range"):
        embed_texts(model, tok, ["x"], layers=[7])
    with pytest.raises(ValueError, match="--pooling sum: must be cls, pooled, mean or max"):
        embed_texts(model, tok, ["x"], pooling="sum")
    with pytest.raises(ValueError, match="pooler"):
        embed_texts(model, tok, ["x"], pooling="pooled", layers=[-2])


def test_length_sorted_batches() -> None:
    batches = length_sorted_batches([3, 9, 1, 7, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_cli_embed_txt_and_csv(tmp_path: Path, minilm_dir: Path, real) -> None:
    model, tok = real
    texts = ["first line", "", "third, with a comma"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "in.txt"),
          "--output", str(tmp_path / "v.npy"), "--pooling", "cls"])
    vectors = np.load(tmp_path / "v.npy")
    # normalised: the folder's modules.json lists a Normalize module, which --pooling leaves in place
    expected = embed_texts(model, tok, texts, pooling="cls", normalize=True).vectors
    np.testing.assert_allclose(vectors, expected, atol=1e-6)

    rows = [{"id": i, "body": t} for i, t in enumerate(texts)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "in.jsonl"), "--text-column", "body",
          "--output", str(tmp_path / "j.npy"), "--pooling", "cls"])
    np.testing.assert_allclose(np.load(tmp_path / "j.npy"), vectors, atol=1e-6)


def test_cli_embed_output_follows_its_suffix(tmp_path: Path, monkeypatch, capsys) -> None:
    """.npy holds the array itself, .npz an archive with the array `embeddings` (not .npy bytes under an .npz
    name); any other suffix is refused in one line before the model loads."""
    import bertforge.checkpoint
    from bertforge.inference.tiny import build
    from bertforge.model import BertModel

    model = build(BertModel, tmp_path / "model", seed=1)
    (tmp_path / "texts.txt").write_text("john played the guitar\nthe river was new\n", encoding="utf-8")
    embed = ["embed", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "texts.txt"), "--device", "cpu"]
    main([*embed, "--output", str(tmp_path / "v.npy")])
    array = np.load(tmp_path / "v.npy")
    assert isinstance(array, np.ndarray) and array.shape == (2, model.config.hidden_size)
    main([*embed, "--output", str(tmp_path / "v.npz")])
    with np.load(tmp_path / "v.npz") as archive:
        assert isinstance(archive, np.lib.npyio.NpzFile) and archive.files == ["embeddings"]
        np.testing.assert_array_equal(archive["embeddings"], array)
    assert "wrote 2 vectors of size 96 to" in capsys.readouterr().out

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(bertforge.checkpoint, "load_model", must_not_load)
    for bad in ("v.txt", "vectors"):
        with pytest.raises(SystemExit):
            main([*embed, "--output", str(tmp_path / bad)])
        assert capsys.readouterr().err.strip() == (
            f"bertforge: error: --output {tmp_path / bad}: vectors are written as .npy (one array) or .npz (the "
            f"array 'embeddings'); use e.g. --output {(tmp_path / bad).with_suffix('.npy')}")
        assert not (tmp_path / bad).exists()


def test_cli_errors_are_one_clear_line(tmp_path: Path, minilm_dir: Path, capsys) -> None:
    (tmp_path / "in.csv").write_text("id,text\n1,hello\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "in.csv"), "--text-column", "body",
              "--output", str(tmp_path / "c.npy")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "in.csv: no column 'body'; the columns are ['id', 'text']" in err and "Traceback" not in err
    (tmp_path / "bad.jsonl").write_text('{"body": "ok"}\n{"body": oops}\n', encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["embed", "--model", str(minilm_dir), "--input", str(tmp_path / "bad.jsonl"), "--text-column", "body"])
    assert "bad.jsonl:2: invalid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", "--model", str(tmp_path / "no-model"), "--input", str(tmp_path / "in.csv")])
    assert "no-model: no such folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="needs --text-column"):
        from bertforge.data.tables import read_texts

        read_texts(tmp_path / "in.csv")
