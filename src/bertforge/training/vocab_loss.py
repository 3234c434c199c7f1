"""Cross-entropy over the vocabulary at the selected positions, the largest tensors of a pre-training step.

The MLM head's logits are [N, V] (N ≈ 600-1,200 selected positions of a 32 × 128 batch at 15-30% masking, V =
8k-30k). `F.cross_entropy(logits.float(), …)` writes several [N, V] fp32 tensors of 80-150 MB a step (the cast,
the log-softmax, and in the backward a zero-filled gradient and the log-softmax gradient) and reads them back.
Here the loss, the accuracy and the gradient come from the forward, and the backward has at most to scale that
gradient (nothing, when the weighted loss is what it backpropagates). Two ways, the same results:

- **fused** (a CPU): two kernels that torch.compile (inductor) generates and caches, each one pass over the bf16
  logits with nothing of [N, V] in fp32 ever written: every row's max and softmax denominator, then the
  gradient exp(score - max) × weight / denominator straight into the logits' dtype. The label's entry, the loss
  (max + log denominator - the label's score: exact however small p is) and the accuracy take a few [N] ops.
  A [640, 30522] bf16 forward and backward with the bias: ~19 ms against ~34 ms the chunked way and ~90 ms for
  `F.cross_entropy` (2-core Xeon with AMX; `python benchmarks/bench_attention.py --positions 640 --vocab 30522`).
- **chunked** (a GPU, in one chunk; a CPU where torch.compile fails, after a warning): eager torch ops on row
  chunks of a few MB that the allocator keeps reusing (on a CPU each block over 32 MB is fresh memory from the
  kernel, whose page faults cost as much as the arithmetic), each chunk's fp32 softmax giving the loss, the
  accuracy and the gradient at once.

The accuracy's argmax runs only on the rows where a max (~10x faster) finds the label at the top: bf16 logits
often tie there, and the tie goes to the first index, as argmax's does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from bertforge import compiled

# loss (fp32 scalar), correct ([N] bool), the gradient of the logits, the bias's gradient (fp32)
_Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]

_CHUNK_ELEMENTS = 1 << 19  # fp32 elements per chunk: 2 MB, far under glibc's 32 MB mmap threshold


def _row_chunks(logits: torch.Tensor) -> list[slice]:
    """Row slices of a few MB on a CPU (see above); one slice elsewhere: a GPU has the memory, and each chunk
    costs it a dozen kernel launches and two waits for the host (the max's rows, the rare tiny probability)."""
    rows, vocab = logits.shape
    step = max(1, _CHUNK_ELEMENTS // vocab) if logits.device.type == "cpu" else max(rows, 1)
    return [slice(start, start + step) for start in range(0, rows, step)]


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None,
                weight: float, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        wants = (ctx.needs_input_grad[0], bias is not None and ctx.needs_input_grad[2])
        fused = _fused_forward(logits, labels, bias, weight, ignore_index, *wants) if compiled.usable(logits) else None
        loss, correct, grad, bias_grad = fused or _chunked_forward(logits, labels, bias, weight, ignore_index, *wants)
        ctx.save_for_backward(grad, bias_grad)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct: None) -> tuple[torch.Tensor | None, None, ...]:
        grad, bias_grad = ctx.saved_tensors
        # A pass over the [N, V] gradient (fresh memory out of place; in place, torch's bf16 multiply takes a slow
        # path on a Xeon with AMX) only when the loss's own gradient is not 1. A CPU knows it already; a GPU would
        # have to wait for it, so it always multiplies.
        if grad is not None and (grad_loss.device.type != "cpu" or float(grad_loss) != 1.0):
            grad = grad * grad_loss
        bias_grad = bias_grad.mul_(grad_loss).to(ctx.bias_dtype) if bias_grad is not None else None
        return grad, None, bias_grad, None, None


# The fused way: two kernels that torch.compile (inductor) generates for a CPU (bertforge.compiled), each one
# pass over the [N, V] logits, with nothing of that size in fp32 ever written out.


def _scores(logits: torch.Tensor, bias32: torch.Tensor | None) -> torch.Tensor:
    return logits.float() if bias32 is None else logits.float() + bias32


def _row_max_and_total(logits: torch.Tensor, bias32: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 1] each: every row's top score (logit + bias) and its softmax denominator, sum exp(score - top)."""
    scores = _scores(logits, bias32)
    top = scores.amax(-1, keepdim=True)
    return top, (scores - top).exp().sum(-1, keepdim=True)


def _weighted_softmax(logits: torch.Tensor, bias32: torch.Tensor | None, top: torch.Tensor,
                      row_weight: torch.Tensor) -> torch.Tensor:
    """[N, V] in the logits' dtype: exp(score - top) × row_weight (the weight over the denominator)."""
    return ((_scores(logits, bias32) - top).exp() * row_weight).to(logits.dtype)


def _fused_forward(logits: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None, weight: float,
                   ignore_index: int, wants_grad: bool, wants_bias_grad: bool) -> _Result | None:
    """The loss, the accuracy and the gradients from the two compiled kernels; None where torch.compile fails
    (bertforge.compiled warns once): the chunked way takes over."""
    bias32 = bias.float() if bias is not None else None
    labelled = labels != ignore_index  # [N]; a row without a label: no loss, no gradient, never correct
    row_weight = labelled[:, None] * weight  # [N, 1] fp32, 0 where unlabelled; over the denominator below
    stats = compiled.call(_row_max_and_total, logits, bias32)
    if stats is None:
        return None
    top, total = stats
    row_weight = row_weight / total
    grad = None
    if wants_grad or wants_bias_grad:
        grad = compiled.call(_weighted_softmax, logits, bias32, top, row_weight)
        if grad is None:
            return None
    safe = labels.masked_fill(~labelled, 0)[:, None]  # [N, 1]
    label_scores = _scores(logits.gather(1, safe), None if bias32 is None else bias32[safe])
    log_probs = (label_scores - top - total.log()).squeeze(1)  # exact however small p is: no underflow
    loss = (-log_probs).masked_fill(~labelled, 0.0).sum().mul(weight)  # +0.0, not -0.0, where nothing is labelled
    correct = _first_at_top((label_scores >= top).squeeze(1), lambda rows: _scores(logits[rows], bias32), safe)
    correct &= labelled
    bias_grad = None
    if grad is not None:
        # d(-log p_y)/d logits = p - one-hot: the label's entry, computed in fp32 and rounded once
        label_grad = (label_scores - top).exp() * row_weight - labelled[:, None] * weight
        # index_put_, not scatter_: torch's CPU scatter_ into bf16 copies the whole tensor twice (30 ms here)
        grad.index_put_((torch.arange(len(safe), device=safe.device), safe.squeeze(1)),
                        label_grad.squeeze(1).to(grad.dtype))
        if wants_bias_grad:
            # The column sums as a [1, N] × [N, V] matmul: a bf16 one rounds its result to bf16, as the decoder
            # weight's gradient is under autocast (torch.sum over the columns of bf16 took 4.5x as long).
            ones = grad.new_ones(1, grad.shape[0])
            bias_grad = (ones @ grad).float().squeeze(0)
    return loss, correct, grad if wants_grad else None, bias_grad


# The chunked way, eager: rows in chunks of a few MB, each through torch's softmax.

def _chunked_forward(logits: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None, weight: float,
                     ignore_index: int, wants_grad: bool, wants_bias_grad: bool) -> _Result:
    loss = logits.new_zeros((), dtype=torch.float32)
    correct = torch.empty_like(labels, dtype=torch.bool)
    # The gradients are made here, from the softmax at hand and already weighted; the backward scales them
    # only by a gradient other than 1.
    grad = torch.empty_like(logits) if wants_grad else None
    bias_grad = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device) if wants_bias_grad else None
    bias32 = bias.float() if bias is not None else None
    for rows in _row_chunks(logits):
        chunk, labelled = logits[rows], labels[rows, None]  # [n, V], [n, 1]
        ignored = labelled == ignore_index  # [n, 1]
        if bool(ignored.any()):  # rows without a label: no loss, no gradient, not correct
            labelled = labelled.masked_fill(ignored, 0)
        else:
            ignored = None
        if bias32 is not None:
            # fp32: the bias comes with the cast the softmax needs anyway. Cast, then add in place (to the cast's
            # copy, never the logits): a mixed-dtype add takes torch's slow path (2.5x the time on a Xeon with AMX).
            chunk = chunk + bias32 if chunk.dtype == torch.float32 else chunk.float().add_(bias32)
        probs = torch.softmax(chunk, dim=-1, dtype=torch.float32)  # torch's fused kernel: its exp is fast
        label_probs = probs.gather(-1, labelled)
        at_top = (label_probs >= probs.amax(-1, keepdim=True)).squeeze(-1)
        correct[rows] = _first_at_top(at_top, functools.partial(probs.index_select, 0), labelled)
        log_probs = _log_label_probs(label_probs, chunk, labelled)
        if ignored is not None:
            correct[rows] &= ~ignored.squeeze(-1)
            log_probs = log_probs.masked_fill(ignored, 0.0)
        loss -= log_probs.sum()
        if grad is not None or bias_grad is not None:
            probs.scatter_add_(-1, labelled, torch.full_like(label_probs, -1.0))  # d(-log p_y)/d logits
            if ignored is not None:
                probs.masked_fill_(ignored, 0.0)
            if weight != 1.0:
                probs.mul_(weight)  # fp32 in place, in the cache: cheap, unlike a pass over the bf16 result
        if grad is not None:
            grad[rows] = probs  # rounded once, into the logits' dtype
        if bias_grad is not None:
            bias_grad += probs.sum(0)
    return loss.mul_(weight), correct, grad, bias_grad


def _first_at_top(at_top: torch.Tensor, scores_of: Callable[[torch.Tensor], torch.Tensor],
                  labelled: torch.Tensor) -> torch.Tensor:
    """[n] bool: whether the label is what argmax would predict, given `at_top` ([n] bool: the label's score is
    its row's max) and `scores_of(rows)`, those rows' scores. A max finds the rows where the label is at the top
    (~10x faster than an argmax on a CPU); only those then take the argmax, whose first-index tie-break matters:
    bf16 logits tie at the top often, early in training most of all."""
    rows = at_top.nonzero().squeeze(-1)
    if rows.numel():
        at_top[rows] = scores_of(rows).argmax(-1) == labelled[rows, 0]
    return at_top


def _log_label_probs(label_probs: torch.Tensor, chunk: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """log p at the labels, [n, 1]; where p is too small for fp32 to hold it closely (log p < -69), the row's
    log-softmax gives it instead (rare: a label the model all but rules out)."""
    logs = label_probs.log()
    tiny = (label_probs < 1e-30).squeeze(-1)
    if tiny.any():
        logs[tiny] = torch.log_softmax(chunk[tiny], -1, dtype=torch.float32).gather(-1, labelled[tiny])
    return logs


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None = None, *,
                         weight: float = 1.0, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, V] logits (any float dtype), [N] labels -> (the summed cross-entropy times `weight`, an fp32 scalar;
    [N] bool, whether argmax would predict the label: ties go to the first index). The value and gradient of
    `weight * F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=ignore_index)` within float
    rounding, with the softmax in fp32 whatever the logits' dtype. A row labelled `ignore_index` adds no loss, gets
    a zero gradient and is never counted correct (the padding rows of BertForPreTraining's row_multiple). The
    gradient, [N, V] in the logits' dtype, is made in the forward, already weighted; the backward passes it on as
    it is when the loss's own gradient is 1 (a CPU training step that backpropagates the weighted loss itself),
    and scales it otherwise.

    `weight`: e.g. 1 / the number of labels over the whole batch, for the mean that training minimises; folded
    into the gradient while each chunk is in the cache, it saves a pass over the [N, V] gradient in the backward.

    `bias` ([V]): the output layer's bias, left out of the logits by the caller and added here to every row, in
    the pass that casts the logits to fp32 (a projection that adds it itself writes the [N, V] logits twice); its
    gradient comes in its own dtype: the column sums of the fp32 gradient (chunked), or of the gradient in the
    logits' dtype by a matmul (fused; in bf16 rounded to bf16 once, as autocast rounds a weight's gradient). The
    result is that of `logits + bias`."""
    if bias is not None and tuple(bias.shape) != (logits.shape[-1],):
        raise ValueError(f"bias must be [V] = [{logits.shape[-1]}] for logits {tuple(logits.shape)}, "
                         f"got {tuple(bias.shape)}")
    return _SummedCrossEntropy.apply(logits, labels, bias, float(weight), int(ignore_index))
