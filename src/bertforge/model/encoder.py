"""BertModel: embeddings -> L encoder layers -> (sequence output, pooled [CLS] output).

One forward pass, two layouts: padded [B, T] batches with an attention mask, or packed (unpadded) [N] tokens
with a `Packing` that says where each sequence lies (packed.py) — the same modules and weights either way.
Shapes: B = batch, T = sequence length, H = hidden size, A = heads, L = layers, N = packed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bertforge.config import BertConfig
from bertforge.model.attention import LayerCache
from bertforge.model.embeddings import BertEmbeddings
from bertforge.model.layer import BertLayer
from bertforge.model.packed import Packing
from bertforge.model.pooler import BertPooler
from bertforge.model.pretrained_model import PretrainedModel


@dataclass
class BertOutput:
    """What the encoder returns, always this one type.

    sequence_output: [B, T, H] final layer ([N, H] packed; [B, 1, H] or [B, H] packed with first_token_only;
        [R, H] with finish_only, its R tokens in row-major order).
    pooled_output: [B, H] tanh(W h_[CLS]) (causal: of the last real token), or None for a model built without
        a pooler.
    hidden_states: L + 1 tensors [B, T, H] ([N, H] packed) (embeddings first), when requested.
    attentions: L tensors [B, A, T, T] of attention probabilities, when requested.
    """

    sequence_output: torch.Tensor
    pooled_output: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] 1/0 mask -> [B, 1, 1, T] bool for SDPA (True = may attend); None when nothing is padded.

    A [B, T, T] mask (query × key, as transformers also accepts) is passed on as [B, 1, T, T]: packed
    pre-training rows use it to keep attention inside each of their windows."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    if attention_mask.dim() == 3:
        return attention_mask.bool()[:, None]
    return attention_mask.bool()[:, None, None, :]


def causal_mask(attention_mask: torch.Tensor | None, query_len: int, past_len: int,
                device: torch.device) -> torch.Tensor:
    """[B or 1, 1, T, S + T] bool: query i (at absolute position S + i) sees keys 0 … S + i that are not padding.

    attention_mask, when given, covers all S + T positions (the cached ones first)."""
    keys = torch.arange(past_len + query_len, device=device)
    queries = past_len + torch.arange(query_len, device=device)
    allowed = (keys[None, :] <= queries[:, None])[None, None]  # [1, 1, T, S + T]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed


@dataclass
class KVCache:
    """Per-layer keys and values of the positions decoded so far (left-to-right use only)."""

    layers: list[LayerCache]

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls([LayerCache() for _ in range(num_layers)])

    @property
    def length(self) -> int:
        keys = self.layers[0].keys
        return 0 if keys is None else keys.shape[2]


class BertModel(PretrainedModel):
    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig, *, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initializer: N(0, initializer_range) weights, zero biases, identity LayerNorm.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor | None = None,  # [B, T], 1 = real token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # [B, T]
        position_ids: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        causal: bool = False,
        cache: KVCache | None = None,
        packing: Packing | None = None,
        first_token_only: bool = False,
        finish_only: torch.Tensor | None = None,  # [B, T] bool ([N] packed)
    ) -> BertOutput:
        """`causal=True` runs the encoder left to right (each token sees only earlier ones); `cache`
        (causal only) holds the keys/values of earlier calls and is extended in place, and
        `attention_mask` then covers the cached positions too.

        `packing` switches to the packed layout: input_ids and token_type_ids are [N], the real tokens of
        B sequences one after another, position_ids default to each token's place in its own sequence, and no
        attention_mask is needed. `first_token_only`: the last layer finishes only each sequence's first
        ([CLS]) token — all a pooler or [CLS] classifier reads — skipping its output projection and
        feed-forward network for every other token (sequence_output [B, 1, H], packed [B, H]). `finish_only` does
        the same for the tokens it marks, whatever they are (a masked-LM head reads only the masked ones):
        sequence_output is then [R, H]; a model with a pooler needs each sequence's first token among them.
        """
        if packing is not None:
            _check_packed_call(input_ids, attention_mask, output_attentions, causal, cache)
            position_ids = packing.positions if position_ids is None else position_ids
        if (first_token_only or finish_only is not None) and (causal or output_hidden_states):
            raise ValueError("first_token_only and finish_only exclude causal and output_hidden_states (they cut the "
                             "last layer short)")
        if finish_only is not None:
            if first_token_only:
                raise ValueError("give first_token_only or finish_only, not both")
            if finish_only.dtype != torch.bool or finish_only.shape != input_ids.shape:
                raise ValueError(f"finish_only must be a bool mask shaped like input_ids {tuple(input_ids.shape)}, "
                                 f"got {finish_only.dtype} {tuple(finish_only.shape)}")
        past = 0
        if cache is not None:
            if not causal:
                raise ValueError("a KV cache only makes sense for causal (left-to-right) use")
            past = cache.length
            if position_ids is None and past:
                position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
        # Query positions for the schemes that act inside attention (relative, rope, alibi).
        positions = position_ids if position_ids is not None and position_ids.dim() == 1 else None
        # Converted once, shared by every layer.
        if causal:
            mask = causal_mask(attention_mask, input_ids.shape[1], past, input_ids.device)
        else:
            mask = padding_mask(attention_mask)
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # [B, T, H] or [N, H]
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        finished = finish_only  # the tokens the last layer finishes: all (None), a bool mask or indices
        if first_token_only:  # [B] packed, [1] padded
            finished = packing.starts if packing is not None else torch.zeros(1, dtype=torch.long,
                                                                              device=input_ids.device)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, probs = layer(x, mask, output_attentions, cache.layers[i] if cache is not None else None, positions,
                             packing=packing, keep_tokens=finished if i == last else None)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(probs)
        if self.pooler is None:
            pooled = None
        elif finish_only is not None:
            pooled = self.pooler(x[_first_tokens(finish_only, packing)].unsqueeze(1))
        elif packing is not None:
            cls = x if first_token_only else x[packing.starts]  # [B, H]
            pooled = self.pooler(cls.unsqueeze(1))
        else:
            pooled = self.pooler(x, attention_mask, last_token=causal)
        return BertOutput(
            sequence_output=x,
            pooled_output=pooled,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _first_tokens(finish_only: torch.Tensor, packing: Packing | None) -> torch.Tensor:
    """[R] bool over the finished tokens: True at each sequence's first token (what the pooler reads)."""
    first = torch.zeros_like(finish_only)
    if packing is not None:
        first[packing.starts] = True
    else:
        first[:, 0] = True
    if not bool(finish_only[first].all()):
        raise ValueError("finish_only must include each sequence's first token: the pooler reads it")
    return first[finish_only]


def _check_packed_call(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool,
                       causal: bool, cache: KVCache | None) -> None:
    if input_ids.dim() != 1:
        raise ValueError(f"packed input_ids are one row [N] of real tokens, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None:
        raise ValueError("packed input has no padding: pass packing (cu_seqlens), not an attention_mask")
    if output_attentions or causal or cache is not None:
        raise ValueError("attention probabilities, causal use and the KV cache need the padded layout")
