"""One post-LayerNorm Transformer encoder layer (BERT §3 uses the original Transformer block).

x -> LayerNorm(x + Dropout(SelfAttention(x))) -> LayerNorm(h + Dropout(FFN(h))), FFN = W2 GELU(W1 h).
Shapes: B = batch, T = sequence length, H = hidden size, I = intermediate size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.config import BertConfig
from bertforge.model.attention import BertSelfAttention, LayerCache


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, H]
        mask: torch.Tensor | None,  # [B, 1, 1 or T, S + T] bool
        return_probs: bool = False,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,  # [T] absolute positions (for the schemes inside attention)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attention(x, mask, return_probs, cache, positions)
        h = self.attention_norm(x + self.dropout(attended))  # [B, T, H]
        ffn = self.output(F.gelu(self.intermediate(h)))  # exact (erf) GELU, as in the released BERT
        return self.output_norm(h + self.dropout(ffn)), probs
