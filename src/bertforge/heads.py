"""Output layers on top of BertModel (BERT §3.1 pre-training, §4 fine-tuning).

Every head returns logits; losses are plain functions in the jobs that train them. `head_logits` is each
head's one public mapping from encoder outputs to its logits (forward, the pipelines and the ONNX export share it).
Besides the inputs, a head's forward takes only named encoder flags (position_ids, output_hidden_states,
output_attentions, and causal for the task heads run left to right): a misspelt flag is a TypeError here.
Shapes: B = batch, T = sequence length, H = hidden size, V = vocab, C = classes or choices,
N = number of selected (masked) positions.
Module names here are mapped to Hugging Face key names in `checkpoint.py` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.config import BertConfig
from bertforge.model import BertModel, BertOutput, KVCache, PretrainedModel
from bertforge.model.dropout import Dropout


class BertMLMHead(nn.Module):
    """Masked-LM head: dense + GELU + LayerNorm, then the decoder tied to the input embeddings + bias."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, embedding_weight: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """[..., H] -> [..., V]; `embedding_weight` is the [V, H] input embedding matrix (weight tying).
        `with_bias=False` leaves the bias out, for a loss that adds it itself (see BertForPreTraining)."""
        h = self.layer_norm(F.gelu(self.dense(hidden)))
        return F.linear(h, embedding_weight, self.bias if with_bias else None)


@dataclass
class PreTrainingOutput:
    """mlm_logits: [N, V] at the selected positions (row-major order), or [B, T, V] when none were given; with a
    `row_multiple`, [N', V]: the N selected positions first, then padding rows up to a multiple (their values are
    meaningless: give them no label, vocab_loss's ignore_index).
    nsp_logits: [B, 2], index 0 = IsNext, 1 = NotNext (the released checkpoints' convention).
    mlm_bias: [V], only when the forward was asked for `bias_in_loss`: mlm_logits then leave out this bias of
    the decoder, and the loss adds it (training/vocab_loss.py)."""

    mlm_logits: torch.Tensor
    nsp_logits: torch.Tensor | None
    encoder: BertOutput
    mlm_bias: torch.Tensor | None = None


class BertForPreTraining(PretrainedModel):
    """MLM + NSP (BERT §3.1). Set `nsp=False` for MLM-only pre-training (RoBERTa, Cramming)."""

    hf_architecture = "BertForPreTraining"

    def __init__(self, config: BertConfig, *, nsp: bool = True) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=nsp)
        self.mlm = BertMLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2) if nsp else None
        self.mlm.apply(self.bert._init_weights)
        if self.nsp is not None:
            self.bert._init_weights(self.nsp)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        masked_positions: torch.Tensor | None = None,  # [B, T] bool
        position_ids: torch.Tensor | None = None,  # [B, T] (packed rows: positions restart in every window)
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        bias_in_loss: bool = False,
        row_multiple: int = 1,
    ) -> PreTrainingOutput:
        """`masked_positions`: the MLM logits only there, [N, V]; the last layer then finishes only those tokens
        (and [CLS] for NSP), unless output_hidden_states asks for all of them. `bias_in_loss`: leave the decoder's
        bias out of mlm_logits and return it as mlm_bias, for a loss that adds it where it costs nothing
        (`summed_cross_entropy(..., bias=)`, which pre-training runs): added by the projection, it costs an
        extra pass over the [N, V] logits.

        `row_multiple` (pre-training passes hardware.matmul_row_multiple): the tokens the last layer finishes and
        the rows of the MLM head are padded up to a multiple of it, so that the matmul shapes repeat from batch to
        batch although masking selects a different count every batch (google-research/bert pads its masked
        positions to max_predictions_per_seq alike). On a CPU each new shape costs a kernel build: see there."""
        if row_multiple < 1:
            raise ValueError(f"row_multiple must be a positive whole number, not {row_multiple}")
        finish = None
        if masked_positions is not None and not output_hidden_states:
            # The last layer finishes only the tokens the heads read: the masked ones, and [CLS] for NSP.
            finish = masked_positions.clone()
            if self.nsp is not None:
                finish[:, 0] = True
            finish = _fill_to_multiple(finish, row_multiple)
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids, finish_only=finish,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        hidden = enc.sequence_output  # [B, T, H], or [R, H] finished
        if masked_positions is not None:
            # The vocabulary projection dominates the cost: run it only where there is a label.
            rows = (masked_positions if finish is None else masked_positions[finish]).flatten().nonzero().squeeze(1)
            padding = -len(rows) % row_multiple
            rows = F.pad(rows, (0, padding)) if padding else rows  # padding rows repeat row 0: any row would do
            hidden = hidden.flatten(0, -2).index_select(0, rows)  # [N, H] (N' with padding)
        nsp_logits = self.nsp(enc.pooled_output) if self.nsp is not None else None
        return PreTrainingOutput(mlm_logits=self.head_logits(hidden, with_bias=not bias_in_loss), nsp_logits=nsp_logits,
                                 encoder=enc, mlm_bias=self.mlm.bias if bias_in_loss else None)

    def head_logits(self, hidden: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """The MLM head on encoder outputs: [..., H] -> [..., V] (what `forward` and the pipelines share);
        with_bias=False leaves the decoder's bias to the loss (see forward's bias_in_loss)."""
        return self.mlm(hidden, self.bert.embeddings.word_embeddings.weight, with_bias=with_bias)


def _fill_to_multiple(mask: torch.Tensor, multiple: int) -> torch.Tensor:
    """mask with its first False entries (row-major) set until its True count is a multiple of `multiple`, or
    until it is all True."""
    if multiple == 1:
        return mask
    count = int(mask.sum())
    extra = min(-count % multiple, mask.numel() - count)
    if extra == 0:
        return mask
    free = (~mask).flatten().nonzero().squeeze(1)[:extra]
    filled = mask.clone()
    filled.view(-1)[free] = True
    return filled


class BertForMaskedLM(BertForPreTraining):
    """MLM head only, no pooler (the layout of Hugging Face `BertForMaskedLM` checkpoints)."""

    hf_architecture = "BertForMaskedLM"

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, nsp=False)


@dataclass
class CausalLMOutput:
    """logits: [B, T, V] (or [N, V] at chosen positions), the prediction of the *next* token; cache: the extended
    KV cache when one was given."""

    logits: torch.Tensor
    cache: KVCache | None
    encoder: BertOutput


class BertLMHeadModel(PretrainedModel):
    """BERT run as a left-to-right decoder: causal self-attention plus the (tied) MLM head as an LM head.

    The layout of Hugging Face `BertLMHeadModel` with `is_decoder=True` (the paper's "LTR" ablation, §5.1)."""

    hf_architecture = "BertLMHeadModel"
    hf_config = {"is_decoder": True}  # tells transformers to apply the causal mask

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.mlm = BertMLMHead(config)
        self.mlm.apply(self.bert._init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        masked_positions: torch.Tensor | None = None,  # [B, T] bool
        position_ids: torch.Tensor | None = None,  # [B, T] (packed rows: positions restart in every window)
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> CausalLMOutput:
        """`masked_positions` ([B, T] bool): compute the logits only there ([N, V]), as pre-training does."""
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids=position_ids, causal=True, cache=cache,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        hidden = enc.sequence_output if masked_positions is None else enc.sequence_output[masked_positions]
        return CausalLMOutput(logits=self.head_logits(hidden), cache=cache, encoder=enc)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on encoder outputs: [..., H] -> [..., V]."""
        return self.mlm(hidden, self.bert.embeddings.word_embeddings.weight)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy: the logits at position t predict labels[t + 1] (labels shifted by one)."""
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])  # [B·(T-1), V]
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=ignore_index)


@dataclass
class ClassifierOutput:
    """logits: [B, C] (sequence / multiple choice) or [B, T, C] (token classification)."""

    logits: torch.Tensor
    encoder: BertOutput


class _LabelledHead(PretrainedModel):
    """Shared by the task models whose outputs are named classes (saved as id2label / label2id)."""

    def _set_labels(self, num_labels: int | None, labels: Sequence[str] | None) -> int:
        if labels is not None:
            labels = [str(label) for label in labels]
            if len(set(labels)) != len(labels):
                raise ValueError(f"labels must be distinct, got {labels}")
            if num_labels is not None and num_labels != len(labels):
                raise ValueError(f"num_labels={num_labels} but {len(labels)} labels were given")
            num_labels = len(labels)
        if num_labels is None or num_labels < 1:
            raise ValueError("give num_labels (>= 1) or the list of labels")
        self.labels = labels
        return num_labels


def _head_dropout(config: BertConfig) -> Dropout:
    """The dropout before a classifier: classifier_dropout when the config sets it, as in transformers."""
    return Dropout(config.hidden_dropout if config.classifier_dropout is None else config.classifier_dropout)


def _pooled_only(output_hidden_states: bool, causal: bool) -> bool:
    """Whether a head that reads the pooled [CLS] alone may let the last layer finish only [CLS]: not when every
    token's states are asked for, nor left to right (the pooler then reads the last real token)."""
    return not (output_hidden_states or causal)


ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]


class BertForSequenceClassification(_LabelledHead):
    """[CLS] -> pooler -> dropout -> linear (BERT §4.1). num_labels=1 is regression (e.g. STS-B).

    The last layer finishes only [CLS], the one token the pooler reads (`first_token_only`): its output projection
    and feed-forward network skip every other token, in training as in inference, and `encoder.sequence_output`
    is [B, 1, H]. Ask for output_hidden_states to have every token's final state.

    `problem_type` is saved in config.json under transformers' name: "multi_label_classification" makes
    its pipelines score every label with a sigmoid (independent yes/no) instead of a softmax over labels."""

    hf_architecture = "BertForSequenceClassification"

    def __init__(self, config: BertConfig, *, num_labels: int | None = None,
                 labels: Sequence[str] | None = None, problem_type: ProblemType | None = None) -> None:
        super().__init__()
        if problem_type not in (None, *ProblemType.__args__):
            raise ValueError(f"problem_type must be one of {', '.join(ProblemType.__args__)}, not {problem_type!r}")
        self.config = config
        self.num_labels = self._set_labels(num_labels, labels)
        self.problem_type = problem_type
        self.hf_config = {"problem_type": problem_type} if problem_type else {}
        self.bert = BertModel(config)
        self.dropout = _head_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.bert._init_weights(self.classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                causal: bool = False) -> ClassifierOutput:
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids=position_ids, causal=causal,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                        first_token_only=_pooled_only(output_hidden_states, causal))
        return ClassifierOutput(logits=self.head_logits(enc.pooled_output), encoder=enc)

    def head_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The classifier on pooled [CLS] outputs: [..., H] -> [..., C]."""
        return self.classifier(self.dropout(pooled))


class BertForTokenClassification(_LabelledHead):
    """Every final hidden state -> dropout -> linear (BERT §5.3, NER). No pooler, as in HF."""

    hf_architecture = "BertForTokenClassification"

    def __init__(self, config: BertConfig, *, num_labels: int | None = None,
                 labels: Sequence[str] | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_labels = self._set_labels(num_labels, labels)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _head_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.bert._init_weights(self.classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                causal: bool = False) -> ClassifierOutput:
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids=position_ids, causal=causal,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return ClassifierOutput(logits=self.head_logits(enc.sequence_output), encoder=enc)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The classifier on every token: [..., H] -> [..., C]."""
        return self.classifier(self.dropout(hidden))


@dataclass
class SpanOutput:
    """start_logits, end_logits: [B, T] — S·T_i and E·T_i for every token i (BERT §4.2)."""

    start_logits: torch.Tensor
    end_logits: torch.Tensor
    encoder: BertOutput


class BertForQuestionAnswering(PretrainedModel):
    """Start vector S and end vector E, one [H, 2] linear layer over every token (BERT §4.2)."""

    hf_architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.span = nn.Linear(config.hidden_size, 2)
        self.bert._init_weights(self.span)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                causal: bool = False) -> SpanOutput:
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids=position_ids, causal=causal,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        start, end = self.head_logits(enc.sequence_output).unbind(-1)  # each [B, T]
        return SpanOutput(start_logits=start, end_logits=end, encoder=enc)

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """S·T_i and E·T_i for every token: [..., H] -> [..., 2] (start, end)."""
        return self.span(hidden)


class BertForMultipleChoice(PretrainedModel):
    """Each (context, ending) pair -> pooled [CLS] -> one score; softmax over the choices (BERT §4.4). As in
    BertForSequenceClassification, the last layer finishes only [CLS]."""

    hf_architecture = "BertForMultipleChoice"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = _head_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.bert._init_weights(self.classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                causal: bool = False) -> ClassifierOutput:
        batch, choices, seq_len = input_ids.shape  # [B, C, T]
        flat = lambda t: None if t is None else t.reshape(batch * choices, seq_len)  # noqa: E731
        enc = self.bert(flat(input_ids), flat(attention_mask), flat(token_type_ids), position_ids=flat(position_ids),
                        causal=causal, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                        first_token_only=_pooled_only(output_hidden_states, causal))
        scores = self.head_logits(enc.pooled_output)  # [B*C, 1]
        return ClassifierOutput(logits=scores.view(batch, choices), encoder=enc)

    def head_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """One score per (context, ending) pair from its pooled [CLS]: [..., H] -> [..., 1]."""
        return self.classifier(self.dropout(pooled))
