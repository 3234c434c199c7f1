"""The pooler (BERT §3, Figure 1): dense + tanh on the final hidden state of [CLS].

A left-to-right (causal) encoder's [CLS] has seen only itself, so there the pooler reads the last real
token instead, the one position that has seen the whole input (as GPT does; the paper's "LTR" ablation).

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

    def forward(self, sequence_output: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                last_token: bool = False) -> torch.Tensor:  # [B, T, H] -> [B, H]
        if not last_token:
            return torch.tanh(self.dense(sequence_output[:, 0]))
        return torch.tanh(self.dense(last_real_token(sequence_output, attention_mask)))


def last_real_token(sequence_output: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, H] -> [B, H], the state of each row's last non-padding token (right padding)."""
    batch, seq_len = sequence_output.shape[:2]
    if attention_mask is None:
        index = torch.full((batch,), seq_len - 1, device=sequence_output.device)
    else:
        index = attention_mask[:, -seq_len:].sum(dim=1).clamp(min=1) - 1
    return sequence_output[torch.arange(batch, device=sequence_output.device), index]
