"""One post-LayerNorm Transformer encoder layer (BERT §3 uses the original Transformer block).

x -> LayerNorm(x + Dropout(SelfAttention(x))) -> LayerNorm(h + Dropout(FFN(h))), FFN = W2 GELU(W1 h).
Everything but attention is position-wise, so the layer runs unchanged on packed [N, H] tokens (packed.py).
Shapes: B = batch, T = sequence length, H = hidden size, I = intermediate size, N = packed tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.config import BertConfig
from bertforge.model.attention import BertSelfAttention, LayerCache, select_tokens
from bertforge.model.dropout import Dropout
from bertforge.model.packed import Packing


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, H], or [N, H] packed
        mask: torch.Tensor | None,  # [B, 1, 1 or T, S + T] bool
        return_probs: bool = False,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,  # [T] absolute positions (for the schemes inside attention)
        *,
        packing: Packing | None = None,  # packed mode: where each sequence of x lies
        keep_tokens: torch.Tensor | None = None,  # finish only these tokens (attention.select_tokens)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """keep_tokens: every token is attended to, but only these go on through the output projection and
        the feed-forward network (all that a [CLS] pooler or a masked-LM head reads from the last layer); the
        result has R tokens."""
        attended, probs = self.attention(x, mask, return_probs, cache, positions, packing=packing,
                                         keep_tokens=keep_tokens)
        if keep_tokens is not None:
            x = select_tokens(x, keep_tokens)  # [B, R, H] or [R, H]
        h = self.attention_norm(x + self.dropout(attended))  # [B, T, H]
        ffn = self.output(F.gelu(self.intermediate(h)))  # exact (erf) GELU, as in the released BERT
        return self.output_norm(h + self.dropout(ffn)), probs
