"""Input representation (BERT §3, Figure 2): token + segment + position embeddings, LayerNorm, dropout.

Absolute positions (learned or sinusoidal) are added here; the other schemes act inside attention.
Every step is per token, so packed input (the [N] real tokens of several sequences, packed.py) works the same
way given each token's position inside its own sequence.

Shapes: B = batch, T = sequence length, H = hidden size, N = packed tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.config import BertConfig
from bertforge.model.dropout import Dropout
from bertforge.model.positions import sinusoidal_table


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        elif config.position_embedding_type == "sinusoidal":
            # A fixed table is not a parameter; it is rebuilt from the config, never loaded.
            table = sinusoidal_table(config.max_position_embeddings, config.hidden_size)
            self.register_buffer("sinusoidal_positions", table, persistent=False)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def position_table(self) -> torch.Tensor | None:
        """[P, H] absolute position vectors, learned or fixed; None when positions act inside attention."""
        if self.config.position_embedding_type == "learned":
            return self.position_embeddings.weight
        if self.config.position_embedding_type == "sinusoidal":
            return self.sinusoidal_positions
        return None

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T], or [N] packed
        token_type_ids: torch.Tensor | None = None,  # the shape of input_ids
        position_ids: torch.Tensor | None = None,  # [B, T] or [T]; packed: [N], required (default 0 … T-1)
    ) -> torch.Tensor:
        seq_len = input_ids.shape[-1]
        # A packed row holds many sequences and may be longer than the table: its positions are checked instead.
        packed = input_ids.dim() == 1 and position_ids is not None
        if not packed and seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}); truncate the input (tokenizer max_length)"
            )
        if position_ids is not None and int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(f"position {int(position_ids.max())} is beyond max_position_embeddings "
                             f"({self.config.max_position_embeddings}); the text is too long for this model")
        x = self.word_embeddings(input_ids)  # [B, T, H] or [N, H]
        table = self.position_table()
        if table is not None:
            # F.embedding, not table[position_ids]: its backward sums rows ~5x faster than indexing's index_put.
            x = x + (table[:seq_len] if position_ids is None else F.embedding(position_ids, table))  # [T|B,T|N, H]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(x))
