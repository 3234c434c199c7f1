"""BertModel: embeddings -> L encoder layers -> (sequence output, pooled [CLS] output).

Shapes: B = batch, T = sequence length, H = hidden size, A = heads, L = layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bertforge.config import BertConfig
from bertforge.model.embeddings import BertEmbeddings
from bertforge.model.layer import BertLayer
from bertforge.model.pooler import BertPooler


@dataclass
class BertOutput:
    """What the encoder returns, always this one type.

    sequence_output: [B, T, H] final layer.
    pooled_output: [B, H] tanh(W h_[CLS]), or None for a model built without a pooler.
    hidden_states: L + 1 tensors [B, T, H] (embeddings first), when requested.
    attentions: L tensors [B, A, T, T] of attention probabilities, when requested.
    """

    sequence_output: torch.Tensor
    pooled_output: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] 1/0 mask -> [B, 1, 1, T] bool for SDPA (True = may attend); None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class BertModel(nn.Module):
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
    ) -> BertOutput:
        mask = padding_mask(attention_mask)  # converted once, shared by every layer
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # [B, T, H]
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            x, probs = layer(x, mask, output_attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(probs)
        return BertOutput(
            sequence_output=x,
            pooled_output=self.pooler(x) if self.pooler is not None else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
