"""The two fine-tuning models the paper's Table 5 needs beyond the task heads (BERT §5.1): a task model
run left to right, and an encoder with a randomly initialised BiLSTM on top.

Shapes: B = batch, T = tokens, H = hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from bertforge.model.encoder import BertOutput
from bertforge.model.pooler import last_real_token


class LeftToRight(nn.Module):
    """Runs a task model's encoder left to right (causal attention) at fine-tuning too: the paper keeps
    the left-only constraint there, since removing it would mismatch pre-training. The pooled output is
    then the last real token's state, the only one that has seen the whole input."""

    def __init__(self, task_model: nn.Module) -> None:
        super().__init__()
        self.task_model = task_model
        self.config = task_model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False):
        """The task model's own output; no `causal` flag, since this model is always left to right."""
        return self.task_model(input_ids, attention_mask, token_type_ids, position_ids=position_ids, causal=True,
                               output_hidden_states=output_hidden_states, output_attentions=output_attentions)


class BiLSTMOnTop(nn.Module):
    """An encoder followed by a randomly initialised one-layer BiLSTM (H/2 units each way, so the task
    head keeps its input size): the paper's "+ BiLSTM" row, which gives an LTR model right context.

    The pooled output joins the forward direction at the last real token and the backward direction at
    the first token: both have read the whole input."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        if hidden % 2:
            raise ValueError(f"BiLSTMOnTop needs an even hidden size, got {hidden}")
        self.encoder = encoder
        self.config = encoder.config
        self.lstm = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                causal: bool = False, first_token_only: bool = False) -> BertOutput:
        """The encoder's flags as a task head passes them to its `bert` (which this module replaces).
        `first_token_only` is ignored: the BiLSTM reads every token, so the encoder finishes them all."""
        enc = self.encoder(input_ids, attention_mask, token_type_ids, position_ids=position_ids, causal=causal,
                           output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        x = enc.sequence_output  # [B, T, H]
        batch, seq_len, hidden = x.shape
        lengths = attention_mask.sum(dim=1) if attention_mask is not None else torch.full((batch,), seq_len)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=seq_len)  # [B, T, H]
        half = hidden // 2
        pooled = torch.cat([last_real_token(states, attention_mask)[:, :half], states[:, 0, half:]], dim=-1)
        return BertOutput(sequence_output=states, pooled_output=pooled, hidden_states=enc.hidden_states,
                          attentions=enc.attentions)
