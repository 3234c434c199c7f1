"""Multi-head self-attention (Transformer paper §3.2) on torch's scaled_dot_product_attention.

Shapes: B = batch, T = sequence length, H = hidden size, A = heads, D = H / A.
Query, key and value are one fused [H, 3H] projection: one matrix multiply instead of three.
For left-to-right decoding, a LayerCache keeps the keys and values of earlier positions (S of them),
so each new token costs one row of attention instead of a whole new forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.config import BertConfig


@dataclass
class LayerCache:
    """Keys and values of the positions already processed by one layer: [B, A, S, D] each."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.dropout_p = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, H]
        mask: torch.Tensor | None,  # [B, 1, 1 or T, S + T] bool, True = may attend; None = attend everywhere
        return_probs: bool = False,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, hidden = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_size)  # [B, T, 3, A, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, A, T, D]
        if cache is not None:
            if cache.keys is not None:
                k = torch.cat([cache.keys, k], dim=2)  # [B, A, S + T, D]
                v = torch.cat([cache.values, v], dim=2)
            cache.keys, cache.values = k, v
        dropout_p = self.dropout_p if self.training else 0.0
        if return_probs:
            # SDPA never materialises the probabilities; compute them explicitly when asked.
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)  # [B, A, T, S + T]
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            context = F.dropout(probs, dropout_p, self.training) @ v  # [B, A, T, D]
        else:
            probs = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(batch, seq_len, hidden)  # [B, T, H]
        return self.output(context), probs
