"""Embeddings the way sentence-transformers users expect: a folder's modules.json, 1_Pooling and 2_Normalize
decide the vectors; the packaged all-MiniLM-L6-v2 matches sentence-transformers (or, without it, the recipe
computed with transformers); and `bertforge embed`, `SentenceEncoder.encode` and HTTP agree on defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.cli import main
from bertforge.inference.sentence import POOLING_FLAGS, SentenceConfig, SentenceEncoder, read_sentence_config
from bertforge.inference.tiny import build, tiny_tokenizer
from bertforge.model import BertModel
from bertforge.pretrained import CheckpointError

TEXTS = ["john played the guitar in paris", "a good movie", "the night was new", "who is the capital ?"]
MODULE = "sentence_transformers.models."


def sentence_folder(directory: Path, *, pooling: str = "cls", normalize: bool = True, seed: int = 3) -> BertModel:
    """A tiny BertModel saved as sentence-transformers saves one: modules.json, 1_Pooling/config.json and,
    when `normalize`, a Normalize module (which, as in real folders, has no files of its own)."""
    model = build(BertModel, directory, seed=seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": MODULE + "Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": MODULE + "Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (directory / "1_Pooling").mkdir()
    flags = {flag: name == pooling for flag, name in POOLING_FLAGS.items()}
    config = {"word_embedding_dimension": 96, **flags, "pooling_mode_mean_sqrt_len_tokens": False}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "sentence_bert_config.json").write_text('{"max_seq_length": 64, "do_lower_case": false}')
    return model


def test_the_packaged_model_reads_as_mean_pooled_normalised_256(minilm_dir: Path) -> None:
    assert read_sentence_config(minilm_dir) == SentenceConfig(pooling="mean", normalize=True, max_length=256)


def test_a_plain_folder_gets_what_sentence_transformers_gives_it(tmp_path: Path) -> None:
    build(BertModel, tmp_path)
    assert read_sentence_config(tmp_path) == SentenceConfig(pooling="mean", normalize=False, max_length=None)
    settings = read_sentence_config(tmp_path).with_options(pooling="max", normalize=None)
    assert (settings.pooling, settings.normalize) == ("max", False)  # None leaves the folder's value


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_pooling_and_normalize_come_from_the_folder(tmp_path: Path, pooling: str) -> None:
    sentence_folder(tmp_path, pooling=pooling, normalize=pooling != "max")
    assert read_sentence_config(tmp_path) == SentenceConfig(pooling, pooling != "max", 64)


def test_modules_bertforge_cannot_apply_are_refused(tmp_path: Path) -> None:
    sentence_folder(tmp_path)
    modules = json.loads((tmp_path / "modules.json").read_text())
    (tmp_path / "modules.json").write_text(json.dumps([*modules, {"path": "3_Dense", "type": MODULE + "Dense"}]))
    with pytest.raises(CheckpointError, match="modules.json: module 'sentence_transformers.models.Dense' is not"):
        read_sentence_config(tmp_path)
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    pooling = tmp_path / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}))
    with pytest.raises(CheckpointError, match="pooling pooling_mode_cls_token, pooling_mode_mean_tokens; bertforge"):
        read_sentence_config(tmp_path)
    pooling.unlink()
    with pytest.raises(CheckpointError, match="1_Pooling/config.json: missing, but modules.json names it"):
        read_sentence_config(tmp_path)


@torch.inference_mode()
def test_a_cls_pooled_model_gets_cls(tmp_path: Path) -> None:
    model = sentence_folder(tmp_path, pooling="cls")
    got = SentenceEncoder(tmp_path).encode(TEXTS)
    tok = tiny_tokenizer(tmp_path)
    batch = tok.encode(TEXTS, padding="longest").tensors()
    expected = torch.nn.functional.normalize(model(**batch).sequence_output[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    one = SentenceEncoder(tmp_path).encode(TEXTS[0])
    assert one.shape == (96,) and np.allclose(one, got[0], atol=1e-6)  # one text in, one vector out


def test_cli_python_and_http_agree_on_defaults(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from bertforge.inference.pipelines import load_pipeline
    from bertforge.inference.server import create_app

    folder = tmp_path / "model"
    sentence_folder(folder, pooling="mean", normalize=True)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    main(["embed", "--model", str(folder), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "v.npy")])
    cli = np.load(tmp_path / "v.npy")
    python = SentenceEncoder(folder).encode(TEXTS)
    with TestClient(create_app(load_pipeline(folder), name="tiny")) as http:
        plain = np.array(http.post("/embed", json={"texts": TEXTS}).json())
        openai = http.post("/v1/embeddings", json={"input": TEXTS, "model": "tiny"}).json()
    compatible = np.array([row["embedding"] for row in openai["data"]])
    np.testing.assert_allclose(np.linalg.norm(cli, axis=1), 1.0, atol=1e-5)  # the folder's Normalize
    for other in (python, plain, compatible):
        np.testing.assert_allclose(other, cli, atol=1e-5)
    # an option overrides the folder the same way everywhere
    main(["embed", "--model", str(folder), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "u.npy"),
          "--normalize", "false"])
    unnormalised = SentenceEncoder(folder).encode(TEXTS, normalize=False)
    np.testing.assert_allclose(np.load(tmp_path / "u.npy"), unnormalised, atol=1e-5)
    assert not np.allclose(np.linalg.norm(unnormalised, axis=1), 1.0)


def test_the_packaged_model_matches_sentence_transformers(minilm_dir: Path) -> None:
    long_text = "the history of the river bank and the bank account " * 40  # > 256 tokens: cut as ST cuts
    texts = ["A man is playing a guitar.", "Stocks fell sharply on Monday.", "Bonjour!", long_text]
    ours = SentenceEncoder("all-minilm-l6-v2").encode(texts)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        reference = _mean_pooled_normalised_with_transformers(minilm_dir, texts, max_length=256)
    else:
        reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    assert np.abs(ours - reference).max() < 1e-5


@torch.inference_mode()
def _mean_pooled_normalised_with_transformers(directory: Path, texts: list[str], max_length: int) -> np.ndarray:
    """all-MiniLM-L6-v2's model card recipe: mean over real tokens, then unit length, texts cut at 256."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = transformers.AutoModel.from_pretrained(str(directory)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1).numpy()
