"""Starting points for pre-training: the sinusoidal position table and the local attention heads of layer 0."""

from __future__ import annotations

import pytest
import torch

from bertforge.config import BertConfig
from bertforge.errors import OptionError
from bertforge.heads import BertForPreTraining
from bertforge.training.initialization import init_local_attention, init_positions_sinusoidal
from bertforge.training.pretrain import PretrainConfig


def _layer0_probs(model: BertForPreTraining, ids: torch.Tensor) -> torch.Tensor:
    """[B, A, T, T] attention probabilities of the first layer on input ids [B, T]."""
    model.eval()
    x = model.bert.embeddings(ids)
    _, probs = model.bert.layers[0].attention(x, None, return_probs=True)
    return probs


def _model(seed: int = 0) -> BertForPreTraining:
    torch.manual_seed(seed)
    config = BertConfig.from_preset("mini", vocab_size=3000, max_position_embeddings=128)
    model = BertForPreTraining(config, nsp=False)
    init_positions_sinusoidal(model.bert.embeddings.position_embeddings.weight, config.initializer_range)
    return model


def test_local_heads_look_at_the_previous_and_the_next_token_whatever_the_tokens():
    model = _model()
    init_local_attention(model)
    probs = _layer0_probs(model, torch.randint(5, 3000, (4, 128), generator=torch.Generator().manual_seed(1)))
    i = torch.arange(1, 127)
    for head, offset in enumerate((-1, 1)):
        on_target = probs[:, head, i, i + offset]
        assert on_target.mean() > 0.7  # most of each local head's attention is on its neighbour
        assert (probs[:, head, i].argmax(-1) == i + offset).float().mean() > 0.85
    assert probs[:, 2:].max() < 0.2  # the other heads keep BERT's random start: near-uniform attention


def test_without_local_init_no_head_prefers_a_neighbour():
    probs = _layer0_probs(_model(), torch.randint(5, 3000, (4, 128), generator=torch.Generator().manual_seed(1)))
    assert probs.max() < 0.2


def test_local_init_keeps_tokens_out_of_the_position_dimensions_and_changes_only_layer_0_attention():
    before = _model()
    after = _model()
    init_local_attention(after)
    size = after.config.head_size
    assert after.bert.embeddings.word_embeddings.weight[:, :size].abs().max() == 0
    changed = {name for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items(), strict=True)
               if not torch.equal(a, b)}
    allowed = {"bert.embeddings.word_embeddings.weight", "bert.embeddings.token_type_embeddings.weight",
               "bert.layers.0.attention.qkv.weight", "bert.layers.0.attention.qkv.bias",
               "mlm_head.decoder.weight"}  # the decoder shares the word embeddings
    assert {"bert.embeddings.word_embeddings.weight", "bert.layers.0.attention.qkv.weight"} <= changed <= allowed


def test_local_attention_needs_the_sinusoidal_table(tmp_path):
    with pytest.raises(OptionError, match="--position-init sinusoidal"):
        PretrainConfig.from_options(data=tmp_path, output_dir=tmp_path / "run", recipe="bert", attention_init="local")
