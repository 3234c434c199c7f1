"""Seeing inside: attention maps agree with the model, [CLS] attention rows are distributions, the
pictures are written, and the pooling comparison computes the right Spearman on known data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bertforge.analysis.attention import attention_maps, plot_cls_attention, plot_head
from bertforge.analysis.input_embeddings import PAIR, SENTENCE, input_parts, plot_input_parts
from bertforge.analysis.poolings import sts_spearman
from bertforge.analysis.positions import plot_sinusoidal, same_token_distance, scheme_distances
from bertforge.checkpoint import load_model
from bertforge.tokenizer import BertTokenizer


@pytest.fixture(scope="module")
def real(minilm_dir: Path):
    return load_model(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)


def test_attention_maps(real, tmp_path: Path) -> None:
    model, tok = real
    maps = attention_maps(model, tok, "The cat sat on the mat.", "It was tired.")
    assert maps.tokens[0] == "[CLS]" and maps.tokens.count("[SEP]") == 2
    assert maps.probs.shape == (6, 12, len(maps.tokens), len(maps.tokens))
    np.testing.assert_allclose(maps.probs.sum(-1), 1.0, atol=1e-5)
    cls = maps.cls_attention()
    np.testing.assert_allclose(cls, maps.probs[:, :, 0].mean(1))
    np.testing.assert_allclose(cls.sum(-1), 1.0, atol=1e-5)
    with torch.inference_mode():  # the same numbers the model reports
        out = model(**tok.encode("The cat sat on the mat.", "It was tired.", padding="longest").tensors(),
                    output_attentions=True)
    np.testing.assert_allclose(maps.probs[2, 5], out.attentions[2][0, 5].numpy(), atol=1e-6)
    for path in (plot_head(maps, 5, 0, tmp_path / "head.png"), plot_cls_attention(maps, tmp_path / "cls.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_same_token_distance(real, tmp_path: Path) -> None:
    model, tok = real
    assert same_token_distance(model, tok) > 0.01  # a trained model tells the two "i" apart
    distances = scheme_distances(tok, preset="tiny")
    assert distances["none"] == 0.0
    assert all(value > 1e-5 for scheme, value in distances.items() if scheme != "none"), distances
    plot_sinusoidal(tmp_path / "sin.png")
    assert (tmp_path / "sin.png").stat().st_size > 10000


def test_input_parts_add_up_to_the_embedding_layer(real, tmp_path: Path) -> None:
    """token + segment + position, normalised, is exactly what the model's embedding layer computes."""
    model, tok = real
    model.eval()
    parts = input_parts(model, tok, SENTENCE, PAIR)
    assert sum(t.startswith("##") for t in parts.tokens) >= 2  # the picture shows WordPiece pieces
    assert parts.tokens[0] == "[CLS]" and parts.tokens.count("[SEP]") == 2
    enc = tok.encode(SENTENCE, PAIR, padding="longest").tensors()
    with torch.inference_mode():
        expected = model.embeddings(enc["input_ids"], enc["token_type_ids"])[0].numpy()
    np.testing.assert_allclose(parts.normalized, expected, atol=1e-5)
    np.testing.assert_allclose(parts.summed, parts.token + parts.segment + parts.position)
    first_b = parts.tokens.index("[SEP]") + 1
    assert not np.allclose(parts.segment[0], parts.segment[first_b])  # segment A and segment B differ
    np.testing.assert_allclose(parts.segment[1], parts.segment[0])  # and are shared inside a segment
    path = plot_input_parts(parts, tmp_path / "sum.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10000


def test_sts_spearman_on_a_known_ranking(real) -> None:
    model, tok = real
    firsts = ["A man plays the guitar.", "A dog runs in the park.", "The stock market fell.", "I like tea."]
    seconds = ["Someone is playing a guitar.", "A puppy is running on grass.", "Stocks dropped sharply.",
               "The spacecraft landed on Mars."]
    scores = [4.8, 4.0, 4.5, 0.2]
    results = sts_spearman(model, tok, firsts, seconds, scores)
    assert set(results) == {"[CLS] (last layer)", "pooler tanh(W·[CLS])", "mean (last layer)",
                            "mean (first + last layer)"}
    assert results["mean (last layer)"] >= 80  # MiniLM is trained for mean pooling: the unrelated pair ranks last
