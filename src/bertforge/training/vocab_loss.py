"""Cross-entropy over the vocabulary at the selected positions, the largest tensors of a pre-training step.

The MLM head's logits are [N, V] (N ≈ 1,200 selected positions of a 32 × 128 batch at 30% masking, V = 16k-30k).
`F.cross_entropy(logits.float(), …)` makes several [N, V] fp32 tensors of 80-120 MB per step: the cast, the
log-softmax, and in the backward a zero-filled gradient and the log-softmax gradient. On a CPU each block that
large is fresh memory from the kernel (glibc maps anything over 32 MB anew and returns it on free), so the page
faults cost as much as the arithmetic. Here the rows go through in chunks of a few MB that the allocator keeps
reusing, the softmax is computed again in the backward instead of stored, and the gradient (softmax - one-hot)
is written straight into the logits' dtype: 36 ms instead of 135 ms for a [1210, 16384] bf16 forward and
backward with the argmax, on 2 cores (benchmarks/bench_attention.py prints both).
"""

from __future__ import annotations

import torch

_CHUNK_ELEMENTS = 1 << 19  # fp32 elements per chunk: 2 MB, far under glibc's 32 MB mmap threshold


def _row_chunks(logits: torch.Tensor) -> list[slice]:
    rows, vocab = logits.shape
    step = max(1, _CHUNK_ELEMENTS // vocab)
    return [slice(start, start + step) for start in range(0, rows, step)]


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = logits.new_zeros((), dtype=torch.float32)
        predictions = torch.empty_like(labels)
        for rows in _row_chunks(logits):
            log_probs = torch.log_softmax(logits[rows], dim=-1, dtype=torch.float32)  # [n, V]
            loss -= log_probs.gather(-1, labels[rows, None]).sum()
            predictions[rows] = log_probs.argmax(-1)  # fp32 argmax: ~6x faster than on bf16 logits
        ctx.save_for_backward(logits, labels)
        ctx.mark_non_differentiable(predictions)
        return loss, predictions

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_predictions: None) -> tuple[torch.Tensor, None]:
        logits, labels = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for rows in _row_chunks(logits):
            probs = torch.softmax(logits[rows], dim=-1, dtype=torch.float32)  # recomputed: cheaper than stored
            probs[torch.arange(probs.shape[0], device=probs.device), labels[rows]] -= 1  # d(-log p_y)/d logits
            torch.mul(probs, grad_loss, out=grad[rows])  # rounded once, into the logits' dtype
        return grad, None


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, V] logits (any float dtype), [N] labels (all valid: no ignore index) -> (the summed cross-entropy, an
    fp32 scalar; [N] predicted ids). The value and gradient of `F.cross_entropy(logits.float(), labels,
    reduction="sum")` within float rounding, with the softmax accumulated in fp32 whatever the logits' dtype."""
    return _SummedCrossEntropy.apply(logits, labels)
