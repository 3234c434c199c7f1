"""Input representation (BERT §3, Figure 2): token + segment + position embeddings, LayerNorm, dropout.

Shapes: B = batch, T = sequence length, H = hidden size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bertforge.config import BertConfig


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """Transformer paper §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # [P, 1]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))  # [d/2]
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()  # [P, d]


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            # A fixed table is not a parameter; it is rebuilt from the config, never loaded.
            table = sinusoidal_table(config.max_position_embeddings, config.hidden_size)
            self.register_buffer("sinusoidal_positions", table, persistent=False)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def position_table(self) -> torch.Tensor:
        """[P, H] position vectors, learned or fixed."""
        if self.config.position_embedding_type == "learned":
            return self.position_embeddings.weight
        return self.sinusoidal_positions

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        token_type_ids: torch.Tensor | None = None,  # [B, T]
        position_ids: torch.Tensor | None = None,  # [B, T] or [T]
    ) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}); truncate the input (tokenizer max_length)"
            )
        x = self.word_embeddings(input_ids)  # [B, T, H]
        if position_ids is None:
            x = x + self.position_table()[:seq_len]  # broadcast [T, H]
        else:
            if int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(f"position {int(position_ids.max())} is beyond max_position_embeddings "
                                 f"({self.config.max_position_embeddings}); the text is too long for this model")
            x = x + self.position_table()[position_ids]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(x))
