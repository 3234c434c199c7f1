"""The encoder: parity with Hugging Face BertModel on the real checkpoint, padding invariance,
sinusoidal positions, attention probabilities, config validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bertforge.checkpoint import load_model
from bertforge.config import BertConfig, ConfigError
from bertforge.model import BertModel
from bertforge.model.embeddings import sinusoidal_table
from bertforge.tokenizer import BertTokenizer

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT is pre-trained on unlabelled text.",
    "A",
    "Feature extraction with bidirectional Transformers works surprisingly well on many tasks, "
    "including named entity recognition and question answering over long Wikipedia paragraphs.",
    "Café déjà vu — naïve résumé!",
]
# Odd sizes expose transposes and head-split bugs (after Hugging Face's model tester).
ODD = BertConfig(vocab_size=99, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def real(minilm_dir: Path):
    ours = load_model(minilm_dir)
    theirs = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    return ours, theirs, tokenizer


def test_real_checkpoint_matches_hugging_face(real) -> None:
    ours, theirs, tokenizer = real
    batch = tokenizer.encode(SENTENCES, SENTENCES[::-1], padding="longest").tensors()
    real_tokens = batch["attention_mask"].bool()
    assert not real_tokens.all()  # the batch really is padded
    with torch.inference_mode():
        mine = ours(**batch, output_hidden_states=True, output_attentions=True)
        ref = theirs(**batch, output_hidden_states=True, output_attentions=True)
    # Positions that are padding carry no meaning; every real token must agree.
    assert (mine.sequence_output - ref.last_hidden_state)[real_tokens].abs().max() < 1e-5
    assert (mine.pooled_output - ref.pooler_output).abs().max() < 1e-5
    assert len(mine.hidden_states) == len(ref.hidden_states) == 7
    for a, b in zip(mine.hidden_states, ref.hidden_states, strict=True):
        assert (a - b)[real_tokens].abs().max() < 1e-5
    for a, b in zip(mine.attentions, ref.attentions, strict=True):
        assert a.shape == b.shape == (len(SENTENCES), 12, real_tokens.shape[1], real_tokens.shape[1])
        query_is_real = real_tokens[:, None, :, None].expand_as(a)  # rows of real tokens
        assert (a - b)[query_is_real].abs().max() < 1e-5


def test_padding_does_not_change_results(real) -> None:
    ours, _, tokenizer = real
    batch = tokenizer.encode(SENTENCES, padding="longest").tensors()
    with torch.inference_mode():
        together = ours(**batch)
        for i, text in enumerate(SENTENCES):
            alone = ours(**tokenizer.encode(text, padding="longest").tensors())
            n = alone.sequence_output.shape[1]
            assert (together.sequence_output[i, :n] - alone.sequence_output[0]).abs().max() < 1e-5
            assert (together.pooled_output[i] - alone.pooled_output[0]).abs().max() < 1e-5


def test_sdpa_and_explicit_attention_agree(real) -> None:
    ours, _, tokenizer = real
    batch = tokenizer.encode(SENTENCES, padding="longest").tensors()
    with torch.inference_mode():
        fast = ours(**batch)
        explicit = ours(**batch, output_attentions=True)
    real_tokens = batch["attention_mask"].bool()
    assert (fast.sequence_output - explicit.sequence_output)[real_tokens].abs().max() < 1e-5
    probs = explicit.attentions[0]
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)  # rows are distributions
    padded_keys = ~batch["attention_mask"].bool()[:, None, None, :].expand_as(probs)
    assert probs[padded_keys].abs().max() == 0  # no attention to padding


def test_output_shapes_and_types_with_odd_sizes() -> None:
    torch.manual_seed(0)
    model = BertModel(ODD).eval()
    ids = torch.randint(0, 99, (13, 7))
    out = model(ids, torch.ones_like(ids), torch.zeros_like(ids), output_hidden_states=True, output_attentions=True)
    assert out.sequence_output.shape == (13, 7, 36)
    assert out.pooled_output.shape == (13, 36)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (13, 3, 7, 7)
    assert BertModel(ODD, add_pooling_layer=False)(ids).pooled_output is None


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = BertModel(ODD.replace(hidden_dropout=0.3, attention_dropout=0.3))
    ids = torch.randint(0, 99, (4, 9))
    model.train()
    assert not torch.equal(model(ids).sequence_output, model(ids).sequence_output)
    model.eval()
    assert torch.equal(model(ids).sequence_output, model(ids).sequence_output)


def test_init_follows_bert() -> None:
    torch.manual_seed(0)
    model = BertModel(BertConfig.from_preset("tiny"))
    weight = model.layers[0].intermediate.weight
    assert abs(weight.std().item() - 0.02) < 0.001
    assert model.layers[0].intermediate.bias.abs().max() == 0
    assert model.embeddings.word_embeddings.weight[0].abs().max() == 0  # [PAD] row
    assert torch.equal(model.layers[0].output_norm.weight, torch.ones(128))


def test_sinusoidal_positions_follow_the_transformer_paper() -> None:
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    config = ODD.replace(position_embedding_type="sinusoidal")
    model = BertModel(config)
    assert not hasattr(model.embeddings, "position_embeddings")
    assert "embeddings.sinusoidal_positions" not in model.state_dict()  # rebuilt, never stored
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in BertModel(ODD).parameters()) - 64 * 36


def test_positions_matter() -> None:
    """With positions, the same token at two places gets two different vectors."""
    torch.manual_seed(0)
    for kind in ("learned", "sinusoidal"):
        model = BertModel(ODD.replace(position_embedding_type=kind)).eval()
        out = model(torch.tensor([[2, 5, 9, 5, 3]])).sequence_output
        assert (out[0, 1] - out[0, 3]).abs().max() > 1e-3


def test_too_long_input_is_a_clear_error() -> None:
    model = BertModel(ODD)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden_size": 100, "num_heads": 3}, "divisible by num_heads"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"hidden_dropout": 1.0}, "hidden_dropout must be in"),
        ({"position_embedding_type": "rotary"}, "position_embedding_type"),
        ({"pad_token_id": 99}, "outside the vocabulary"),
        ({"heads": 4}, "unknown BertConfig fields"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ODD.replace(**changes)


def test_presets() -> None:
    assert [BertConfig.from_preset(n).num_layers for n in ("tiny", "mini", "small", "medium", "base", "large")] == [
        2, 4, 4, 8, 12, 24]
    large = BertConfig.from_preset("large")
    assert (large.hidden_size, large.num_heads, large.intermediate_size, large.vocab_size) == (1024, 16, 4096, 30522)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        BertConfig.from_preset("huge")
    assert BertConfig.from_dict(large.to_dict()) == large
