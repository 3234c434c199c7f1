"""Cross-entropy over the vocabulary at the selected positions, the largest tensors of a pre-training step.

The MLM head's logits are [N, V] (N ≈ 1,200 selected positions of a 32 × 128 batch at 30% masking, V = 16k-30k).
`F.cross_entropy(logits.float(), …)` makes several [N, V] fp32 tensors of 80-120 MB per step: the cast, the
log-softmax, and in the backward a zero-filled gradient and the log-softmax gradient. On a CPU each block that
large is fresh memory from the kernel (glibc maps anything over 32 MB anew and returns it on free), so the page
faults cost as much as the arithmetic. Here the rows go through in chunks of a few MB that the allocator keeps
reusing. Each chunk's fp32 softmax gives the loss, the accuracy and the gradient (softmax - one-hot, written
straight into the logits' dtype, and weighted there by the caller's `weight`, e.g. 1 / count for a mean) in one
go, so the backward has at most to scale that gradient, and nothing to do when the weighted loss is what it
backpropagates (1.02x the mini step on a Xeon with AMX, where that pass over fresh memory cost ~5 ms). torch's
softmax is used rather than log-softmax because its exp is ~1.5x faster than `exp_`, and the argmax runs only on
the rows where a max (~10x faster) finds the label at the top. A [592, 30522] bf16 forward and backward with the
accuracy: 10.6 ms, against 20.3 ms when the backward recomputed the softmax and the argmax ran on every row, and 42 ms
for `F.cross_entropy` (2 cores, freed memory kept; `python benchmarks/bench_attention.py --positions 592
--vocab 30522`: random logits, so the label is rarely at the top; where 40% are, ~2 ms more).
"""

from __future__ import annotations

import torch

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
        loss = logits.new_zeros((), dtype=torch.float32)
        correct = torch.empty_like(labels, dtype=torch.bool)
        # The gradients are made here, from the softmax at hand and already weighted; the backward scales them
        # only by a gradient other than 1.
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        bias_grad = torch.zeros(logits.shape[-1], dtype=torch.float32, device=logits.device) \
            if bias is not None and ctx.needs_input_grad[2] else None
        bias32 = bias.float() if bias is not None else None
        for rows in _row_chunks(logits):
            chunk, labelled = logits[rows], labels[rows, None]  # [n, V], [n, 1]
            ignored = labelled == ignore_index  # [n, 1]
            if bool(ignored.any()):  # rows without a label: no loss, no gradient, not correct
                labelled = labelled.masked_fill(ignored, 0)
            else:
                ignored = None
            if bias32 is not None:
                # fp32: the bias comes with the cast the softmax needs anyway. Cast, then add in place (to the
                # cast's copy, never the logits): a mixed-dtype add takes torch's slow path (2.5x the time on a
                # Xeon with AMX).
                chunk = chunk + bias32 if chunk.dtype == torch.float32 else chunk.float().add_(bias32)
            probs = torch.softmax(chunk, dim=-1, dtype=torch.float32)  # torch's fused kernel: its exp is fast
            label_probs = probs.gather(-1, labelled)
            correct[rows] = _is_argmax(probs, label_probs, labelled)
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
        ctx.save_for_backward(grad, bias_grad)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(correct)
        return loss.mul_(weight), correct

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


def _is_argmax(probs: torch.Tensor, label_probs: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """[n] bool: whether the label is what argmax would predict. A max finds the rows where the label is at the
    top (~10x faster than an argmax on a CPU); only those then take the argmax, whose first-index tie-break
    matters: bf16 logits tie at the top often, early in training most of all."""
    at_top = (label_probs >= probs.amax(-1, keepdim=True)).squeeze(-1)
    rows = at_top.nonzero().squeeze(-1)
    if rows.numel():
        at_top[rows] = probs.index_select(0, rows).argmax(-1) == labelled[rows, 0]
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
    the pass that casts each chunk to fp32 (a projection that adds it itself writes the [N, V] logits twice);
    its gradient, in its own dtype, comes from the fp32 chunks. The result is that of `logits + bias`."""
    if bias is not None and tuple(bias.shape) != (logits.shape[-1],):
        raise ValueError(f"bias must be [V] = [{logits.shape[-1]}] for logits {tuple(logits.shape)}, "
                         f"got {tuple(bias.shape)}")
    return _SummedCrossEntropy.apply(logits, labels, bias, float(weight), int(ignore_index))
