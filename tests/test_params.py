"""Parameter accounting: the formula, the built model and Hugging Face BertModel agree."""

from __future__ import annotations

import pytest
import torch

from bertforge.config import PRESETS, BertConfig
from bertforge.model import BertModel
from bertforge.params import run, total_parameters


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
