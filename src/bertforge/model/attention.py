"""Multi-head self-attention (Transformer paper §3.2) on torch's scaled_dot_product_attention.

Shapes: B = batch, T = sequence length, H = hidden size, A = heads, D = H / A, N = packed tokens.
Query, key and value are one fused [H, 3H] projection: one matrix multiply instead of three.
For left-to-right decoding, a LayerCache keeps the keys and values of earlier positions (S of them),
so each new token costs one row of attention instead of a whole new forward pass.
In packed mode (`packing` given, see packed.py) x is [N, H], the real tokens of B sequences one after another;
the same projections run on them and only the attention call itself keeps the sequences apart.
Every attention call goes through `attend`, which picks the kernel (see there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.config import BertConfig
from bertforge.model import positions as pos
from bertforge.model.dropout import dropout
from bertforge.model.packed import Packing


@dataclass
class LayerCache:
    """Keys and values of the positions already processed by one layer: [B, A, S, D] each, and those
    positions [S] (for the schemes that score distances)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    positions: torch.Tensor | None = None


def select_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The tokens of x ([B, T, H], or [N, H] packed) that `keep` names: [R] indices along dim -2, the same in every
    row ([B, R, H] or [R, H]), or a bool mask over the token dims ([B, T] or [N]) -> [R, H] in row-major order."""
    return x[keep] if keep.dtype == torch.bool else x.index_select(-2, keep)


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
        x: torch.Tensor,  # [B, T, H], or [N, H] packed
        mask: torch.Tensor | None,  # [B, 1, 1 or T, S + T] bool, True = may attend; None = attend everywhere
        return_probs: bool = False,
        cache: LayerCache | None = None,
        positions: torch.Tensor | None = None,  # [T] (packed: [N]) positions of the queries (default 0 … T-1)
        *,
        packing: Packing | None = None,  # packed mode: where each sequence of x lies (mask is then unused)
        keep_tokens: torch.Tensor | None = None,  # return only these tokens (see select_tokens)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention output [B, T, H] ([N, H] packed; [B, R, H] or [R, H] with keep_tokens) and, when asked,
        the probabilities [B, A, T, S + T]. Tokens left out by keep_tokens still serve as keys and values."""
        if packing is not None:
            context, probs = self._packed_context(x, packing, positions), None  # [N, H]
        else:
            context, probs = self._context(x, mask, return_probs, cache, positions)  # [B, T, H]
        if keep_tokens is not None:
            context = select_tokens(context, keep_tokens)  # skip the output projection of the others
        return self.output(context), probs

    def _packed_context(self, x: torch.Tensor, packing: Packing, positions: torch.Tensor | None) -> torch.Tensor:
        if self.position_type in pos.DISTANCE_BIAS:
            raise ValueError(f"packed mode supports learned, sinusoidal, rope and none positions, not "
                             f"{self.position_type!r} (it scores distances on a padded grid); use the padded forward")
        n = x.shape[0]
        qkv = self.qkv(x).view(n, 3, self.num_heads, self.head_size)  # [N, 3, A, D]
        if self.position_type == "rope":
            positions = packing.positions if positions is None else positions  # [N]
            q, k, v = qkv.unbind(1)  # each [N, A, D]
            q, k = (pos.rope_rotate(t.transpose(0, 1), positions).transpose(0, 1) for t in (q, k))
            qkv = torch.stack([q, k, v], dim=1)  # [N, 3, A, D]
        return packed_attention(qkv, packing, self.dropout_p if self.training else 0.0)

    def _context(self, x: torch.Tensor, mask: torch.Tensor | None, return_probs: bool, cache: LayerCache | None,
                 positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
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
            context = dropout(probs, dropout_p, self.training) @ v  # [B, A, T, D]
        else:
            probs = None
            context = attend(q, k, v, mask, dropout_p)
        return context.transpose(1, 2).reshape(batch, seq_len, hidden), probs  # [B, T, H]

    def _position_bias(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                       key_positions: torch.Tensor) -> torch.Tensor | None:
        if self.position_type not in pos.DISTANCE_BIAS:
            return None
        distance = positions[:, None] - key_positions[None, :]  # [T, S + T] signed i - j
        if self.position_type in pos.RELATIVE:
            scores = pos.relative_scores(q, k, self.distance_embedding.weight, distance, self.max_positions,
                                         with_key=self.position_type == "relative_key_query")
            return scores / math.sqrt(self.head_size)  # added before the 1/sqrt(D) scaling in the HF layout
        return pos.alibi_bias(self.alibi_slopes, distance).to(q.dtype)[None]


# Above this many attention scores (B·A·T·S) an inference call goes to SDPA: the written-out scores no longer fit
# in the cache and SDPA's tiled kernel catches up (level at 6.3M scores, 12 heads at T=256; 1.3-3x slower than
# the written-out form below 4M).
_WRITTEN_OUT_MAX_SCORES = 1 << 22


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ / √D + mask) v for [..., T, D] queries and [..., S, D] keys and values; a bool mask is True
    where a query may attend, a float mask is added to the scores.

    SDPA everywhere except in bf16 on a CPU, where torch's fused (flash) kernel is slow at BERT's shapes and
    `written_out_attention` runs instead (benchmarks/bench_attention.py, AVX-512 BF16, 2 threads): SDPA's forward
    + backward is 3-5x slower (one mini layer at T=128: 23.6 ms against 7.7 ms), its forward alone 1.3-3x slower
    whenever the scores fit in the cache (all-MiniLM-L6-v2's rows, 12 heads of 32, T=32: 2.0 against 0.8 ms).
    Inference on longer rows keeps SDPA (`_WRITTEN_OUT_MAX_SCORES`)."""
    if _written_out_wins(q, k, v):
        return written_out_attention(q, k, v, mask, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _written_out_wins(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """bf16 on a CPU (not nested): always when training, in inference while the B·A·T·S scores fit in the cache."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or q.is_nested:
        return False
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return training or q.shape[:-1].numel() * k.shape[-2] <= _WRITTEN_OUT_MAX_SCORES


def written_out_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                          dropout_p: float = 0.0) -> torch.Tensor:
    """`attend` as two batched matrix multiplies around a softmax, with `attend`'s arguments. The first multiply
    adds the mask to the scores itself (baddbmm): 0 where a query may attend and the dtype's lowest value
    elsewhere, so a query with no key at all stays finite. In bf16 the scores are bf16; the softmax accumulates
    in fp32 inside the kernel, and its bf16 output is what an autocast matmul would round it to."""
    *lead, length, head = q.shape
    keys = k.shape[-2]
    q3, k3, v3 = q.reshape(-1, length, head), k.reshape(-1, keys, head), v.reshape(-1, keys, head)  # [B·A, ., D]
    if mask is None:
        # The scale inside the multiply (beta=0: the first argument is never read); a separate in-place bf16
        # multiply takes a slow path on a Xeon with AMX.
        scores = torch.baddbmm(q3.new_empty(1, 1, 1), q3, k3.transpose(1, 2), beta=0, alpha=head ** -0.5)
    else:
        bias = _additive_mask(mask, q.dtype)  # [..., 1 or T, S]
        bias = bias.expand(*lead, bias.shape[-2], keys).reshape(-1, bias.shape[-2], keys)  # [B·A, 1 or T, S]
        scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=head ** -0.5)  # [B·A, T, S]
    probs = _softmax_last(scores)
    if dropout_p > 0:
        probs = dropout(probs, dropout_p)
    return torch.bmm(probs, v3).view(*lead, length, head)


def _softmax_last(scores: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim, in the scores' dtype. torch's bf16 CPU kernel is 2-6x slower than a pass through
    fp32 when a row ends 8 or more elements past a multiple of 32 (its vector width), as BERT's short rows often
    do (16-31 keys: 3-6x), and level or faster elsewhere (forward and backward, AVX-512 BF16, 2 threads)."""
    keys = scores.shape[-1]
    if scores.dtype == torch.bfloat16 and keys > 8 and keys % 32 >= 8:
        return torch.softmax(scores, -1, dtype=torch.float32).to(scores.dtype)
    return scores.softmax(dim=-1)


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = may attend) as 0 / the dtype's lowest value; a float mask as it is (-inf stays -inf)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def packed_attention(qkv: torch.Tensor, packing: Packing, dropout_p: float = 0.0) -> torch.Tensor:
    """[N, 3, A, D] fused q, k, v of packed tokens -> [N, A·D] context; each token attends within its own
    sequence only, in the way `packing.attention` names (the results agree within float rounding)."""
    n, _, heads, head = qkv.shape
    if packing.attention == "padded":
        # Padding only inside attention, the cheapest part of a short-sequence BERT.
        batch, longest, index = packing.batch_size, packing.longest, packing.padded_index
        padded = qkv.new_zeros(batch * longest, 3, heads, head)
        padded[index] = qkv
        q, k, v = padded.view(batch, longest, 3, heads, head).permute(2, 0, 3, 1, 4).unbind(0)  # [B, A, T, D]
        context = attend(q, k, v, packing.key_mask, dropout_p)
        return context.transpose(1, 2).reshape(batch * longest, heads * head)[index]  # [N, A·D]
    if packing.attention == "nested":
        # No padding at all; on CPU SDPA has no fused jagged kernel and loops over the sequences.
        q, k, v = (
            # SDPA's nested path needs each of q, k, v contiguous in the [B, j, A, D] layout.
            torch.nested.nested_tensor_from_jagged(t.contiguous(), packing.cu_seqlens).transpose(1, 2)  # [B, A, j, D]
            for t in qkv.unbind(1)
        )
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # [B, A, j, D]
        return context.transpose(1, 2).values().reshape(n, heads * head)
    # "block": one row of N tokens, a block-diagonal [N, N] mask (O(N²) work).
    q, k, v = qkv.permute(1, 2, 0, 3).unbind(0)  # [A, N, D]
    context = attend(q, k, v, packing.block_mask, dropout_p)
    return context.transpose(0, 1).reshape(n, heads * head)  # [N, A·D]
