"""Parameter accounting: the formula, the built model and Hugging Face BertModel agree."""

from __future__ import annotations

import pytest
import torch

from bertforge.config import PRESETS, BertConfig
from bertforge.model import BertModel
from bertforge.params import approximate_parameters, run, total_parameters


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("pooler", [True, False])
def test_formula_equals_built_model(preset: str, pooler: bool) -> None:
    config = BertConfig.from_preset(preset)
    with torch.device("meta"):
        assert BertModel(config, add_pooling_layer=pooler).num_parameters() == total_parameters(config, pooler=pooler)


def test_published_totals(capsys) -> None:
    assert run("base") == 109_482_240  # Hugging Face BertModel(bert-base-uncased config), pooler included
    assert run("large") == 335_141_888
    out = capsys.readouterr().out
    assert "token embeddings" in out and "23,440,896" in out  # 30,522 × 768
    assert run("base", position_embedding_type="sinusoidal") == 109_482_240 - 512 * 768


def test_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    for preset in ("tiny", "medium"):
        layers, hidden, heads = PRESETS[preset]
        hf_config = transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                            intermediate_size=4 * hidden)
        with torch.device("meta"):
            expected = transformers.BertModel(hf_config).num_parameters()
        assert total_parameters(BertConfig.from_preset(preset)) == expected


@pytest.mark.parametrize(("preset", "layers", "embeddings", "arithmetic"), [
    ("base", 84_934_656, 23_834_112, ("12 × 12 × 768²", "(30,522 + 512) × 768")),  # ≈ 85M + 23.8M ≈ 110M
    ("large", 301_989_888, 31_778_816, ("12 × 24 × 1024²", "(30,522 + 512) × 1024")),  # ≈ 302M + 31.8M ≈ 340M
])
def test_twelve_l_h_squared_beside_the_exact_count(capsys, preset, layers, embeddings, arithmetic) -> None:
    config = BertConfig.from_preset(preset)
    rows = approximate_parameters(config)
    assert [(r[0], r[1], r[3]) for r in rows] == [("layers", "12·L·H²", layers),
                                                  ("embeddings", "V·H + P·H", embeddings),
                                                  ("sum", "", layers + embeddings)]
    assert (rows[0][2], rows[1][2]) == arithmetic
    assert 0 < 1 - (layers + embeddings) / total_parameters(config) < 0.01  # biases, LayerNorms, pooler: < 1%
    exact = run(preset)
    out = capsys.readouterr().out
    assert f"{arithmetic[0]:<28} {layers:>14,}  ≈ {layers / 1e6:.1f}M" in out
    assert f"{layers + embeddings:>14,}  ≈ {(layers + embeddings) / 1e6:.1f}M" in out
    assert f"{exact:>14,}  ≈ {exact / 1e6:.1f}M" in out


def test_approximation_without_position_table_or_with_another_feed_forward_width() -> None:
    sinusoidal = BertConfig.from_preset("base", position_embedding_type="sinusoidal")
    assert approximate_parameters(sinusoidal)[1] == ("embeddings", "V·H", "30,522 × 768", 30_522 * 768)
    narrow = BertConfig.from_preset("small", intermediate_size=1000)  # not 4H: the rule's general form
    assert approximate_parameters(narrow)[0] == ("layers", "L·(4H² + 2HI)", "4 × (4 × 512² + 2 × 512 × 1000)",
                                                 4 * (4 * 512**2 + 2 * 512 * 1000))
