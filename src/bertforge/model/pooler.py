"""The pooler (BERT §3, Figure 1): dense + tanh on the final hidden state of [CLS].

Shapes: B = batch, T = sequence length, H = hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from bertforge.config import BertConfig


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, H]
        return torch.tanh(self.dense(sequence_output[:, 0]))
