"""How much matmul work a BERT does, and how close a run came to the machine's limit (MFU).

Counted for one token in one layer, forward pass, a multiply-add being 2 FLOPs:
- Q, K, V and the attention output projection: 2·4H²; the feed-forward pair: 2·2HI;
- attention scores QKᵀ and the weighted sum of V: 2·2·L·H, for a token in a text of L tokens.
The backward pass costs two forward passes (gradients of inputs and of weights), so training is ×3.
Embedding look-ups, LayerNorm, softmax and GELU are not matmuls and are left out (1-2% of the work).

Only useful work counts: real tokens, and the vocabulary projection at the positions that carry a loss. Work
on padding, or a dense projection at every position, is waste rather than utilisation (the model FLOPs
utilisation of PaLM, Chowdhery et al. 2022, appendix B), so MFU ratios equal throughput ratios.
"""

from __future__ import annotations

from collections.abc import Sequence

from bertforge.config import BertConfig

TRAINING = 3  # forward + backward, in forward passes


def encoder_flops(config: BertConfig, lengths: Sequence[int], *, training: bool = False,
                  finished: Sequence[int] | None = None) -> int:
    """Matmul FLOPs of the encoder layers over texts of these token lengths (no padding).

    `finished`: per text, how many tokens the heads read from the last layer ([CLS] alone for a pooled
    classifier: 1; the masked ones, and [CLS] for NSP, in pre-training). The last layer's other tokens serve
    only as keys and values, so their query, output projection, feed-forward and attention rows are not useful
    work (a system that computes them anyway is wasting it, as on padding)."""
    h, i = config.hidden_size, config.intermediate_size
    projections = 2 * (4 * h * h + 2 * h * i)  # per token

    def per_token(length: int) -> int:
        return projections + 2 * 2 * length * h

    total = config.num_layers * sum(length * per_token(length) for length in lengths)
    if finished is not None:
        keys_and_values = 2 * 2 * h * h  # what an unfinished token still does in the last layer
        total -= sum((length - kept) * (per_token(length) - keys_and_values)
                     for length, kept in zip(lengths, finished, strict=True))
    return total * (TRAINING if training else 1)


def mlm_head_flops(config: BertConfig, positions: int, *, training: bool = False) -> int:
    """Matmul FLOPs of the masked-LM head at `positions` predicted tokens: the H×H transform, then the
    (tied) H×V projection onto the vocabulary."""
    h, v = config.hidden_size, config.vocab_size
    return positions * 2 * (h * h + h * v) * (TRAINING if training else 1)


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak FLOP/s."""
    return flops / seconds / peak
