"""The heads' contract with the encoder and the callers: forward names every flag it passes on (no `**kwargs`,
so a misspelt flag is a TypeError), each flag reaches the encoder, and `head_logits` is the head that forward
applies to the encoder outputs."""

from __future__ import annotations

import inspect

import pytest
import torch

from bertforge.config import BertConfig
from bertforge.heads import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMHeadModel,
    PreTrainingOutput,
    SpanOutput,
)

ODD = BertConfig(vocab_size=99, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
FLAGS = {"position_ids", "output_hidden_states", "output_attentions"}
TASK_HEADS = [(BertForSequenceClassification, {"num_labels": 3}), (BertForTokenClassification, {"num_labels": 5}),
              (BertForQuestionAnswering, {}), (BertForMultipleChoice, {})]
ALL_HEADS = [(BertForPreTraining, {}), (BertForMaskedLM, {}), (BertLMHeadModel, {}), *TASK_HEADS]


def _inputs(cls: type) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, ODD.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    if cls is BertForMultipleChoice:  # [B, C, T]: two choices per example
        inputs = {k: torch.stack([v, v.flip(0)], 1) for k, v in inputs.items()}
    return inputs


def _logits(out) -> torch.Tensor:
    if isinstance(out, PreTrainingOutput):
        return out.mlm_logits
    if isinstance(out, SpanOutput):
        return torch.stack([out.start_logits, out.end_logits], -1)  # the [..., 2] layout of head_logits
    return out.logits


@pytest.mark.parametrize(("cls", "kwargs"), ALL_HEADS, ids=lambda v: getattr(v, "__name__", ""))
def test_forward_names_its_flags_and_refuses_a_misspelt_one(cls: type, kwargs: dict) -> None:
    parameters = inspect.signature(cls.forward).parameters
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    expected = FLAGS | ({"causal"} if (cls, kwargs) in TASK_HEADS else set())
    assert expected <= set(parameters)
    model = cls(ODD, **kwargs).eval()
    with pytest.raises(TypeError, match="output_hiden_states"):
        model(**_inputs(cls), output_hiden_states=True)


@pytest.mark.parametrize(("cls", "kwargs"), ALL_HEADS, ids=lambda v: getattr(v, "__name__", ""))
@torch.no_grad()
def test_every_flag_reaches_the_encoder(cls: type, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = cls(ODD, **kwargs).eval()
    inputs = _inputs(cls)
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert len(out.encoder.hidden_states) == ODD.num_layers + 1 and len(out.encoder.attentions) == ODD.num_layers
    plain = _logits(model(**inputs))
    shifted = torch.arange(3, 10).expand_as(inputs["input_ids"])  # positions 3..9 instead of 0..6
    assert not torch.allclose(_logits(model(**inputs, position_ids=shifted)), plain)


@pytest.mark.parametrize(("cls", "kwargs"), TASK_HEADS[1:3], ids=lambda v: getattr(v, "__name__", ""))
@torch.no_grad()
def test_causal_task_heads_do_not_see_later_tokens(cls: type, kwargs: dict) -> None:
    """A task head run left to right (the paper's LTR fine-tuning): a token's logits ignore every later token."""
    torch.manual_seed(0)
    model = cls(ODD, **kwargs).eval()
    ids = torch.tensor([[2, 10, 11, 12, 13, 3]])
    changed = ids.clone()
    changed[0, 4:] = torch.tensor([40, 41])
    first, second = (_logits(model(x, causal=True))[0, :4] for x in (ids, changed))
    torch.testing.assert_close(first, second)
    assert not torch.allclose(_logits(model(ids))[0, :4], _logits(model(changed))[0, :4])


@pytest.mark.parametrize(("cls", "kwargs"), [(BertForPreTraining, {}), (BertLMHeadModel, {}), *TASK_HEADS],
                         ids=lambda v: getattr(v, "__name__", ""))
@torch.no_grad()
def test_head_logits_is_the_head_forward_applies(cls: type, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = cls(ODD, **kwargs).eval()
    out = model(**_inputs(cls))
    pooled = cls in (BertForSequenceClassification, BertForMultipleChoice)
    logits = model.head_logits(out.encoder.pooled_output if pooled else out.encoder.sequence_output)
    torch.testing.assert_close(logits.reshape(_logits(out).shape), _logits(out))


@pytest.mark.parametrize(("cls", "kwargs"), [(BertForSequenceClassification, {"num_labels": 3}),
                                             (BertForMultipleChoice, {})], ids=lambda v: getattr(v, "__name__", ""))
def test_pooled_heads_finish_only_cls_in_the_last_layer_with_the_same_logits_and_gradients(cls, kwargs) -> None:
    """What the pooled heads skip (the last layer's output projection and FFN for every token but [CLS]) changes
    nothing the loss sees: logits and every weight's gradient match the full forward (output_hidden_states
    asks for every token, so it runs the last layer in full)."""
    torch.manual_seed(0)
    model = cls(ODD, **kwargs).train()  # ODD has no dropout: both passes are deterministic
    runs = []
    for full in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(**_inputs(cls), output_hidden_states=full)
        out.logits.square().sum().backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (cut, cut_grads), (whole, whole_grads) = runs
    assert cut.encoder.sequence_output.shape[-2] == 1 and whole.encoder.sequence_output.shape[-2] == 7
    torch.testing.assert_close(cut.logits, whole.logits)
    assert cut_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(cut_grads[name], grad, msg=name)


@pytest.mark.parametrize(("cls", "nsp_head"), [(BertForPreTraining, True), (BertForMaskedLM, False)])
def test_pretraining_finishes_only_masked_tokens_in_the_last_layer_with_the_same_logits_and_gradients(
        cls, nsp_head) -> None:
    """Given masked_positions, the last layer finishes only them (and [CLS] for NSP): the MLM and NSP logits and
    every weight's gradient match the full forward (output_hidden_states runs the last layer in full)."""
    torch.manual_seed(0)
    model = cls(ODD).train()
    inputs = _inputs(cls)
    masked = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    masked[0, [2, 5]] = masked[1, 3] = True
    runs = []
    for full in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, masked_positions=masked, output_hidden_states=full)
        loss = out.mlm_logits.square().sum() + (out.nsp_logits.square().sum() if nsp_head else 0)
        loss.backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (cut, cut_grads), (whole, whole_grads) = runs
    finished = 3 + (2 if nsp_head else 0)  # the masked tokens, and each row's [CLS] for NSP
    assert cut.encoder.sequence_output.shape == (finished, ODD.hidden_size)
    assert whole.encoder.sequence_output.shape == (2, 7, ODD.hidden_size)
    torch.testing.assert_close(cut.mlm_logits, whole.mlm_logits)
    if nsp_head:
        torch.testing.assert_close(cut.nsp_logits, whole.nsp_logits)
    assert cut_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(cut_grads[name], grad, msg=name)


def test_pretraining_can_leave_the_decoder_bias_to_the_loss() -> None:
    """bias_in_loss: mlm_logits without the bias, the bias returned beside them; together they are the default's
    logits, and the loss that adds the bias gives the default loss and gradients."""
    from bertforge.training.vocab_loss import summed_cross_entropy

    torch.manual_seed(0)
    model = BertForPreTraining(ODD).train()
    with torch.no_grad():
        model.mlm.bias.normal_()
    inputs = _inputs(BertForPreTraining)
    masked = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    masked[0, [2, 5]] = masked[1, 3] = True
    labels = inputs["input_ids"][masked]
    runs = []
    for bias_in_loss in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, masked_positions=masked, bias_in_loss=bias_in_loss)
        summed_cross_entropy(out.mlm_logits, labels, out.mlm_bias)[0].backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (whole, whole_grads), (left, left_grads) = runs
    assert whole.mlm_bias is None and left.mlm_bias is model.mlm.bias
    torch.testing.assert_close(left.mlm_logits + left.mlm_bias, whole.mlm_logits)
    assert left_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(left_grads[name], grad, msg=name)


@pytest.mark.parametrize(("cls", "nsp_head"), [(BertForPreTraining, True), (BertForMaskedLM, False)])
def test_pretraining_pads_its_rows_to_a_multiple_with_the_same_logits_losses_and_gradients(cls, nsp_head) -> None:
    """row_multiple: the last layer finishes a multiple of it (or every token), the MLM logits have a multiple of it
    rows, the first N of them the plain forward's; the pre-training losses (which give the padding rows no label)
    and every weight's gradient are the plain forward's."""
    from bertforge.training.pretrain import losses

    torch.manual_seed(0)
    model = cls(ODD).train()
    inputs = _inputs(cls)
    ids = inputs["input_ids"]
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[0, [2, 5]] = masked[1, 3] = True
    labels, nsp = ids[masked], torch.tensor([0, 1])
    runs = []
    for multiple in (1, 4, 64):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, masked_positions=masked, bias_in_loss=True, row_multiple=multiple)
        stats = losses(out, labels, nsp, shown_mask=torch.tensor([True, False, True]))
        (stats["mlm_term"] + stats.get("nsp_sum", 0)).backward()
        runs.append((out, stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_stats, plain_grads), *padded_runs = runs
    finished = 3 + (2 if nsp_head else 0)
    assert plain.mlm_logits.shape[0] == 3 and plain.encoder.sequence_output.shape[0] == finished
    for (out, stats, grads), (rows, tokens) in zip(padded_runs, [(4, 8 if nsp_head else 4), (64, 14)], strict=True):
        assert out.mlm_logits.shape[0] == rows  # 64: more rows than tokens, padding repeats a row
        assert out.encoder.sequence_output.shape[0] == tokens  # a multiple of 4, or all 2 x 7 tokens
        torch.testing.assert_close(out.mlm_logits[:3], plain.mlm_logits)
        if nsp_head:
            torch.testing.assert_close(out.nsp_logits, plain.nsp_logits)
        for key, value in plain_stats.items():
            torch.testing.assert_close(stats[key], value, msg=key)
        assert grads.keys() == plain_grads.keys()
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, msg=name)
    with pytest.raises(ValueError, match="row_multiple must be a positive whole number"):
        model(**inputs, masked_positions=masked, row_multiple=0)
