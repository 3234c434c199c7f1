"""The matmul FLOP count behind every benchmark's MFU line, against hand-computed values and the built model."""

from __future__ import annotations

import pytest
import torch

from bertforge.config import BertConfig
from bertforge.flops import encoder_flops, mfu, mlm_head_flops
from bertforge.hardware import bf16_skip_reason, matmul_peak, native_bf16
from bertforge.model import BertModel

# Odd, distinct sizes so that a swapped H and I, or a dropped factor, changes the number.
SMALL = BertConfig(vocab_size=10, hidden_size=4, num_layers=2, num_heads=2, intermediate_size=8)


def test_encoder_flops_by_hand():
    # Per token and layer: 2·(4·4² + 2·4·8) = 256 for the projections, plus attention 2·2·L·4 = 16·L.
    # Text of 3 tokens: 3·(256 + 48) = 912; of 5 tokens: 5·(256 + 80) = 1680; 2 layers: 2·2592 = 5184.
    assert encoder_flops(SMALL, [3, 5]) == 5184
    assert encoder_flops(SMALL, [3, 5], training=True) == 3 * 5184
    assert encoder_flops(SMALL, []) == 0


def test_encoder_flops_of_a_last_layer_that_finishes_some_tokens_by_hand():
    # The last layer's unfinished tokens keep only K and V: 2·2·4² = 64 each instead of 256 + 16·L.
    # Text of 3 tokens, 1 finished: 2 × (304 - 64) less; of 5, all 5 finished: nothing less. 5184 - 480 = 4704.
    assert encoder_flops(SMALL, [3, 5], finished=[1, 5]) == 4704
    assert encoder_flops(SMALL, [3, 5], finished=[3, 5]) == 5184
    assert encoder_flops(SMALL, [3, 5], finished=[1, 5], training=True) == 3 * 4704


def test_mlm_head_flops_by_hand():
    # Per position: 2·(4·4 + 4·10) = 112 (transform, then the projection onto 10 words).
    assert mlm_head_flops(SMALL, 3) == 336
    assert mlm_head_flops(SMALL, 3, training=True) == 1008


def test_projection_flops_are_twice_the_layers_weight_matrices():
    """A one-token text does 2 FLOPs per weight of every Linear in the layers (+ 4H of attention)."""
    config = BertConfig.from_preset("mini")
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)
    weights = sum(m.weight.numel() for m in model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert encoder_flops(config, [1]) == 2 * weights + config.num_layers * 4 * config.hidden_size


def test_base_sequence_of_128():
    # 12 · 128 · (2·(4·768² + 2·768·3072) + 4·128·768), worked out once by hand.
    assert encoder_flops(BertConfig.from_preset("base"), [128]) == 22_347_251_712


def test_mfu_is_achieved_over_peak():
    assert mfu(50e9, 2.0, 100e9) == pytest.approx(0.25)


def test_bf16_is_skipped_exactly_where_it_is_not_native():
    reason = bf16_skip_reason("cpu")
    assert (reason is None) == native_bf16("cpu")
    if reason is not None:
        assert reason == "skipped: this CPU has no native bf16"
        with pytest.raises(ValueError, match="no native bf16"):
            matmul_peak(torch.bfloat16, "cpu")
