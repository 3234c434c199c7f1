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
from bertforge.model import positions as pos


@dataclass
class LayerCache:
    """Keys and values of the positions already processed by one layer: [B, A, S, D] each, and those
    positions [S] (for the schemes that score distances)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    positions: torch.Tensor | None = None


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.dropout_p = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.position_type = config.position_embedding_type
        self.max_positions = config.max_position_embeddings
        if self.position_type in pos.RELATIVE:
            # One vector per distance -(P-1) … P-1, shared by the heads (the Hugging Face BERT layout).
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.head_size)
        elif self.position_type == "alibi":
            self.register_buffer("alibi_slopes", pos.alibi_slopes(config.num_heads), persistent=False)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, H]
        mask: torch.Tensor | None,  # [B, 1, 1 or T, S + T] bool, True = may attend; None = attend everywhere
        return_probs: bool = False,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,  # [T] absolute positions of the queries (default 0 … T-1)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, hidden = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_size)  # [B, T, 3, A, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, A, T, D]
        if positions is None:
            positions = torch.arange(seq_len, device=x.device)
        if self.position_type == "rope":  # rotate before caching: cached keys keep their own angles
            q, k = pos.rope_rotate(q, positions), pos.rope_rotate(k, positions)
        key_positions = positions
        if cache is not None:
            if cache.keys is not None:
                k = torch.cat([cache.keys, k], dim=2)  # [B, A, S + T, D]
                v = torch.cat([cache.values, v], dim=2)
                key_positions = torch.cat([cache.positions, positions])  # [S + T]
            cache.keys, cache.values, cache.positions = k, v, key_positions
        dropout_p = self.dropout_p if self.training else 0.0
        bias = self._position_bias(q, k, positions, key_positions)  # [B or 1, A, T, S + T], added to the scores
        if bias is not None:
            # SDPA adds a float mask to the scaled scores: fold the padding/causal mask into the bias.
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        if return_probs:
            # SDPA never materialises the probabilities; compute them explicitly when asked.
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)  # [B, A, T, S + T]
            if mask is not None and mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            elif mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            context = F.dropout(probs, dropout_p, self.training) @ v  # [B, A, T, D]
        else:
            probs = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(batch, seq_len, hidden)  # [B, T, H]
        return self.output(context), probs

    def _position_bias(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                       key_positions: torch.Tensor) -> torch.Tensor | None:
        if self.position_type not in pos.RELATIVE and self.position_type != "alibi":
            return None
        distance = positions[:, None] - key_positions[None, :]  # [T, S + T] signed i - j
        if self.position_type in pos.RELATIVE:
            scores = pos.relative_scores(q, k, self.distance_embedding.weight, distance, self.max_positions,
                                         with_key=self.position_type == "relative_key_query")
            return scores / math.sqrt(self.head_size)  # added before the 1/sqrt(D) scaling in the HF layout
        return pos.alibi_bias(self.alibi_slopes, distance).to(q.dtype)[None]
