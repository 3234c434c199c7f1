"""The packed (unpadded) layout: B sequences of different lengths stored one after another as N tokens.

A packed batch is one [N] row of token ids (N = sum of lengths) and `cu_seqlens` [B + 1], the offset of each
sequence (FlashAttention's variable-length convention, which ModernBERT also uses). It is a *mode* of the one
`BertModel` forward, not a second model: pass `packing=Packing(cu_seqlens)` and the same embedding, attention
and layer modules run on [N, H] instead of [B, T, H]. Every position-wise part — embeddings, the qkv and output
projections, the feed-forward layers, LayerNorm — then touches real tokens only; only attention needs to know
where sequences begin and end, and `Packing` holds that layout (see `attention.packed_attention` for the three
ways of using it).

This file holds the layout and two helpers: `pack` (id lists -> packed tensors) and `packed_forward` (the
inference entry point `inference/predictor.py` uses).
Shapes: B = batch, N = total real tokens, T = longest sequence, H = hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal, get_args

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # encoder.py imports this file
    from bertforge.model.encoder import BertModel

# How attention keeps the sequences of a packed batch apart (attention.packed_attention):
# "padded" scatters q, k, v to [B, A, T, D] for one SDPA call with a key-padding mask (measured fastest on CPU,
# docs/inference.md); "nested" uses nested jagged tensors; "block" one [N, N] block-diagonal mask.
PackedAttention = Literal["padded", "nested", "block"]


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


class Packing:
    """Where each sequence of a packed batch lies, and the derived tensors attention needs.

    Each derived tensor is computed on first use and then shared by every layer of the forward pass, so
    build one `Packing` per batch (not per layer).
    """

    def __init__(self, cu_seqlens: torch.Tensor, *, attention: PackedAttention = "padded") -> None:
        if attention not in get_args(PackedAttention):
            raise ValueError(f"attention must be padded, nested or block, not {attention!r}")
        if cu_seqlens.dim() != 1 or len(cu_seqlens) < 2:
            raise ValueError(f"cu_seqlens must be [B + 1] offsets starting at 0, got shape {tuple(cu_seqlens.shape)}")
        self.cu_seqlens = cu_seqlens
        self.attention = attention

    @property
    def batch_size(self) -> int:
        return len(self.cu_seqlens) - 1

    @property
    def starts(self) -> torch.Tensor:
        """[B] index of each sequence's first token ([CLS])."""
        return self.cu_seqlens[:-1]

    @cached_property
    def lengths(self) -> torch.Tensor:
        return self.cu_seqlens.diff()  # [B]

    @cached_property
    def longest(self) -> int:
        return int(self.lengths.max())

    @cached_property
    def positions(self) -> torch.Tensor:
        return packed_positions(self.cu_seqlens)  # [N]

    @cached_property
    def sequence_ids(self) -> torch.Tensor:
        """[N] which sequence (0 … B-1) each token belongs to."""
        return torch.repeat_interleave(torch.arange(self.batch_size, device=self.cu_seqlens.device), self.lengths)

    @cached_property
    def padded_index(self) -> torch.Tensor:
        """[N] index of every token in the flattened [B * T] padded layout."""
        return self.sequence_ids * self.longest + self.positions

    @cached_property
    def key_mask(self) -> torch.Tensor | None:
        """[B, 1, 1, T] bool, True = a real key, for the padded layout; None when nothing is padded."""
        mask = torch.arange(self.longest, device=self.cu_seqlens.device)[None, :] < self.lengths[:, None]  # [B, T]
        return None if bool(mask.all()) else mask[:, None, None, :]

    @cached_property
    def block_mask(self) -> torch.Tensor:
        """[N, N] bool, True where query and key belong to the same sequence."""
        return self.sequence_ids[:, None] == self.sequence_ids[None, :]


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


def packed_forward(
    model: BertModel,
    input_ids: torch.Tensor,  # [N]
    cu_seqlens: torch.Tensor,  # [B + 1]
    token_type_ids: torch.Tensor | None = None,  # [N]
    *,
    attention: PackedAttention = "padded",
    output_hidden_states: bool = False,
    first_token_only: bool = False,
    token_multiple: int = 1,
) -> PackedOutput:
    """Inference over packed tokens: `model(input_ids, packing=...)`, equal to the padded forward at every real
    token. Refuses training mode: served results must not depend on dropout.

    `first_token_only`: the output is packed with length 1 per sequence: sequence_output [B, H] (each [CLS]),
    cu_seqlens = 0, 1, …, B (see BertModel.forward).
    `token_multiple` (the Predictor passes hardware.matmul_row_multiple): the model runs on filler sequences too,
    up to a multiple of it tokens, so that the projections' shapes repeat from batch to batch (a new shape costs a
    kernel build on a CPU: see there); the outputs hold the real sequences only.
    """
    if model.training:
        raise RuntimeError("packed_forward is for inference: call model.eval() first (dropout would apply)")
    if token_multiple < 1:
        raise ValueError(f"token_multiple must be a positive whole number, not {token_multiple}")
    tokens, batch = len(input_ids), len(cu_seqlens) - 1
    run_ids, run_seqlens, run_types = _with_fillers(input_ids, cu_seqlens, token_type_ids, token_multiple)
    out = model(run_ids, token_type_ids=run_types, packing=Packing(run_seqlens, attention=attention),
                output_hidden_states=output_hidden_states, first_token_only=first_token_only)
    if first_token_only:
        cu_seqlens = torch.arange(len(cu_seqlens), device=cu_seqlens.device)  # [B + 1]: one token each
    kept = batch if first_token_only else tokens
    return PackedOutput(
        sequence_output=out.sequence_output[:kept], cu_seqlens=cu_seqlens,
        pooled_output=out.pooled_output[:batch] if out.pooled_output is not None else None,
        hidden_states=tuple(h[:tokens] for h in out.hidden_states) if out.hidden_states is not None else None)


def _with_fillers(input_ids: torch.Tensor, cu_seqlens: torch.Tensor, token_type_ids: torch.Tensor | None,
                  multiple: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The packed batch with filler sequences (token id 0) after the real ones, up to a multiple of `multiple`
    tokens; none longer than the longest real sequence, so the attention's padded layout keeps its width. A
    filler attends only to itself (Packing keeps sequences apart), so the real tokens' results do not change."""
    missing = -len(input_ids) % multiple
    if missing == 0:
        return input_ids, cu_seqlens, token_type_ids
    longest = int(cu_seqlens.diff().max())
    lengths = [longest] * (missing // longest) + ([missing % longest] if missing % longest else [])
    ends = int(cu_seqlens[-1]) + torch.tensor(lengths, device=cu_seqlens.device).cumsum(0)
    fillers = input_ids.new_zeros(missing)
    types = torch.cat([token_type_ids, fillers]) if token_type_ids is not None else None
    return torch.cat([input_ids, fillers]), torch.cat([cu_seqlens, ends]), types
