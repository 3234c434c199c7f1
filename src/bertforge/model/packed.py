"""The BertModel forward pass over packed (unpadded) sequences, for inference.

A batch of B sequences of different lengths is stored as one [N, H] matrix of its N real tokens
(N = sum of lengths) and `cu_seqlens` [B + 1], the offset of each sequence (as in FlashAttention's
variable-length API). Every position-wise part of the encoder — embeddings, the qkv and output projections,
the feed-forward layers, LayerNorm — runs on the N real tokens only, so no work is spent on padding.
Only attention needs to know where sequences begin and end; `attention` chooses how:

- "padded": scatter q, k, v to [B, A, T, D] and call SDPA with a key-padding mask (padding only inside
  attention, the cheapest part of a short-sequence BERT);
- "nested": torch nested jagged tensors through SDPA (no padding at all; on CPU SDPA has no fused jagged
  kernel and loops over sequences — measured 1.8× slower than "padded", docs/inference.md);
- "block": all sequences in one row with a block-diagonal mask (O(N²); measured 2.5× slower at batch 32).

Uses the weights of an existing BertModel (no parameters of its own); results equal the padded forward
within float32 rounding. Dropout is skipped, so the model must be in eval mode.
Shapes: B = batch, N = total real tokens, T = longest sequence, H = hidden, A = heads, D = H / A.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bertforge.model.encoder import BertModel
from bertforge.model.layer import BertLayer
from bertforge.model.positions import ABSOLUTE

PackedAttention = Literal["padded", "nested", "block"]


@dataclass
class PackedOutput:
    """sequence_output: [N, H] real tokens only; pooled_output: [B, H] or None; cu_seqlens: [B + 1]."""

    sequence_output: torch.Tensor
    pooled_output: torch.Tensor | None
    cu_seqlens: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None

    def first_tokens(self) -> torch.Tensor:
        """[B, H] the final hidden state of each sequence's first token ([CLS])."""
        return self.sequence_output[self.cu_seqlens[:-1]]


def pack(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Id lists -> (flat ids [N], cu_seqlens [B + 1])."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0))
    flat = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    return flat, cu_seqlens


def packed_positions(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N] position of each token inside its own sequence (0, 1, …, 0, 1, …)."""
    lengths = cu_seqlens.diff()
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths)  # [N]
    return torch.arange(int(cu_seqlens[-1]), device=cu_seqlens.device) - starts


def _padded_index(cu_seqlens: torch.Tensor, longest: int) -> torch.Tensor:
    """[N] index of every real token in the flattened [B * T] padded layout."""
    lengths = cu_seqlens.diff()
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)
    return rows * longest + packed_positions(cu_seqlens)


def _attend(qkv: torch.Tensor, cu_seqlens: torch.Tensor, num_heads: int, mode: PackedAttention,
            cache: dict) -> torch.Tensor:
    """[N, 3H] fused q, k, v of packed tokens -> [N, H] attention context."""
    n, three_h = qkv.shape
    hidden = three_h // 3
    head = hidden // num_heads
    qkv = qkv.view(n, 3, num_heads, head)  # [N, 3, A, D]
    batch = len(cu_seqlens) - 1
    if mode == "padded":
        if "index" not in cache:
            lengths = cu_seqlens.diff()
            longest = int(lengths.max())
            cache["longest"] = longest
            cache["index"] = _padded_index(cu_seqlens, longest)
            mask = torch.arange(longest, device=qkv.device)[None, :] < lengths[:, None]  # [B, T]
            cache["mask"] = None if bool(mask.all()) else mask[:, None, None, :]  # [B, 1, 1, T]
        longest, index = cache["longest"], cache["index"]
        padded = qkv.new_zeros(batch * longest, 3, num_heads, head)
        padded[index] = qkv
        q, k, v = padded.view(batch, longest, 3, num_heads, head).permute(2, 0, 3, 1, 4).unbind(0)  # [B, A, T, D]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=cache["mask"])  # [B, A, T, D]
        return context.transpose(1, 2).reshape(batch * longest, hidden)[index]  # [N, H]
    if mode == "nested":
        q, k, v = (
            # SDPA's nested path needs each of q, k, v contiguous in the [B, j, A, D] layout.
            torch.nested.nested_tensor_from_jagged(t.contiguous(), cu_seqlens).transpose(1, 2)  # [B, A, j, D]
            for t in qkv.unbind(1)
        )
        context = F.scaled_dot_product_attention(q, k, v)  # [B, A, j, D]
        return context.transpose(1, 2).values().reshape(n, hidden)
    if mode == "block":
        if "block_mask" not in cache:
            seq_of = torch.repeat_interleave(torch.arange(batch, device=qkv.device), cu_seqlens.diff())
            cache["block_mask"] = seq_of[:, None] == seq_of[None, :]  # [N, N]
        q, k, v = qkv.permute(1, 2, 0, 3).unbind(0)  # [A, N, D]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=cache["block_mask"])  # [A, N, D]
        return context.transpose(0, 1).reshape(n, hidden)
    raise ValueError(f"attention must be padded, nested or block, not {mode!r}")


def _layer(layer: BertLayer, x: torch.Tensor, cu_seqlens: torch.Tensor, mode: PackedAttention,
           cache: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The BertLayer computation on [N, H] packed tokens (same modules, no dropout).
    With `rows`, every token is attended to but only those rows are computed further ([len(rows), H])."""
    attn = layer.attention
    context = _attend(attn.qkv(x), cu_seqlens, attn.num_heads, mode, cache)  # [N, H]
    if rows is not None:
        x, context = x[rows], context[rows]  # [R, H]
    h = layer.attention_norm(x + attn.output(context))
    return layer.output_norm(h + layer.output(F.gelu(layer.intermediate(h))))


def packed_forward(
    model: BertModel,
    input_ids: torch.Tensor,  # [N]
    cu_seqlens: torch.Tensor,  # [B + 1]
    token_type_ids: torch.Tensor | None = None,  # [N]
    *,
    attention: PackedAttention = "padded",
    output_hidden_states: bool = False,
    first_token_only: bool = False,
) -> PackedOutput:
    """The encoder over packed tokens; equals `model(padded batch)` at every real token.

    `first_token_only`: the last layer finishes only each sequence's first ([CLS]) token — all a pooler or
    [CLS] classifier reads — skipping its output projection and feed-forward for every other token. The
    output is then packed with length 1 per sequence: sequence_output [B, H], cu_seqlens = 0, 1, …, B.
    """
    if model.training:
        raise RuntimeError("packed_forward skips dropout: call model.eval() first")
    if model.config.position_embedding_type not in ABSOLUTE:
        raise ValueError(f"packed_forward supports absolute positions only, not "
                         f"{model.config.position_embedding_type!r}; use the padded forward")
    emb = model.embeddings
    positions = packed_positions(cu_seqlens)
    if int(cu_seqlens.diff().max()) > model.config.max_position_embeddings:
        raise ValueError(f"a sequence is longer than max_position_embeddings ({model.config.max_position_embeddings})")
    x = emb.word_embeddings(input_ids) + emb.position_table()[positions]  # [N, H]
    if token_type_ids is None:
        x = x + emb.token_type_embeddings.weight[0]
    else:
        x = x + emb.token_type_embeddings(token_type_ids)
    x = emb.layer_norm(x)
    states = [x] if output_hidden_states else None
    cache: dict = {}  # attention index/mask, computed once and shared by every layer
    if first_token_only and output_hidden_states:
        raise ValueError("first_token_only and output_hidden_states exclude each other")
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        x = _layer(layer, x, cu_seqlens, attention, cache, cu_seqlens[:-1] if first_token_only and i == last else None)
        if states is not None:
            states.append(x)
    if first_token_only:
        cu_seqlens = torch.arange(len(cu_seqlens), device=cu_seqlens.device)  # [B + 1]: one token each
    pooled = model.pooler(x[cu_seqlens[:-1]].unsqueeze(1)) if model.pooler is not None else None
    return PackedOutput(sequence_output=x, pooled_output=pooled, cu_seqlens=cu_seqlens,
                        hidden_states=tuple(states) if states is not None else None)
