"""Optimizers and learning-rate schedules (BERT Appendix A.2: Adam with decoupled weight decay 0.01,
linear warmup over the first steps, then linear decay).

Biases and LayerNorm weights take no weight decay, as in the released BERT optimizer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

ScheduleName = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases, LayerNorm weights and 1-d tensors do not."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(model: nn.Module, *, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-6) -> torch.optim.AdamW:
    """torch's AdamW (decoupled weight decay, Loshchilov & Hutter); eps 1e-6 as in BERT's optimizer.

    Fused (one kernel over all parameters) where torch has it for the parameters' device and dtype, as the
    Trainer's default `adamw_torch_fused`: on a CPU the per-parameter loop costs ~10 small ops a tensor each
    step (benchmarks/bench_finetune.py). The same update up to float rounding."""
    params = list(model.parameters())
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused or None)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float,
                   lookup: LookupGradients | None = None) -> torch.Tensor:
    """torch's clip_grad_norm_: scale every gradient by min(1, max_norm / (norm + 1e-6)), where norm is their
    total 2-norm, and return that norm. Except that on a CPU the scaling is skipped when its factor is 1, and
    that `lookup`'s tables add only the rows of their gradients that can be nonzero to the norm.

    torch multiplies by the clamped factor unconditionally, so that a GPU need not wait for the norm. On a CPU
    the norm is already known, and the multiply by 1 is a full pass over the gradients. That pass is 3 ms
    of a ~100 ms fine-tuning step of all-MiniLM-L6-v2 (benchmarks/profile_finetune_step.py), and with BERT's
    bound of 1.0 most steps need no clipping. The result is the same bit for bit (without `lookup`; with it, up
    to the order of the norm's sums)."""
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params] if lookup is None else lookup.nonzero_rows([p.grad for p in params])
    norm = torch.nn.utils.get_total_norm(grads)
    if norm.device.type != "cpu" or not max_norm / (float(norm) + 1e-6) >= 1.0:  # `not >=`: a NaN norm clips
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


class LookupGradients:
    """Gradients of a model's lookup tables (nn.Embedding: words, segments, positions) kept in one dense
    buffer per table, zeroed in place between steps, instead of a new dense tensor every step.

    A lookup touches only the rows of the batch's tokens, yet its default backward allocates a zeroed gradient
    the size of the whole table (all-MiniLM-L6-v2's words: 47 MB). Past 32 MB glibc's malloc maps that memory
    fresh from the system every step, so every page faults on first write, and unmaps it when the gradient is
    freed: ~12 ms of a ~100 ms fine-tuning step (benchmarks/profile_finetune_step.py). Here the tables run
    their sparse backward (the batch's rows only) and autograd adds those rows into the buffer. The optimizer,
    clipping and the loss scaler see the same dense gradient as before, so the update is unchanged.

    With `track_rows` (one process: other processes' rows arrive by an all-reduce this class does not see), it
    also notes the rows each table looked up since the last `zero()`: zeroing then clears only those rows, and
    `nonzero_rows` hands the norm of clip_gradients only those rows, instead of a pass over the whole table each
    (on a Xeon with AMX, 3.6 and ~4.5 ms of a 118 ms step). A table that also received a dense gradient (a
    tied output layer) is zeroed and counted whole until the next `zero()`.

    Only for fine-tuning: in pre-training the tied MLM decoder gives the word table a dense gradient anyway.
    `zero()` replaces optimizer.zero_grad between steps; `close()` gives the tables back as they were."""

    def __init__(self, model: nn.Module, *, track_rows: bool = False) -> None:
        self.tables = [m for m in model.modules()
                       if isinstance(m, nn.Embedding) and m.weight.requires_grad and not m.sparse]
        self.track_rows = track_rows
        self._looked_up: dict[nn.Embedding, list[torch.Tensor]] = {}  # since the last zero()
        self._dense: set[nn.Embedding] = set()  # tables that received a dense gradient since the last zero()
        self._hooks = []
        for table in self.tables:
            table.sparse = True
            table.weight.grad = torch.zeros_like(table.weight)
            if track_rows:
                self._hooks += [table.register_forward_pre_hook(self._note_lookup),
                                table.weight.register_hook(functools.partial(self._note_dense, table))]

    def _note_lookup(self, table: nn.Embedding, args: tuple) -> None:
        if torch.is_grad_enabled():  # an evaluation's lookups make no gradient: not worth keeping
            self._looked_up.setdefault(table, []).append(args[0].detach().flatten())

    def _note_dense(self, table: nn.Embedding, grad: torch.Tensor) -> None:
        if grad.layout == torch.strided:
            self._dense.add(table)

    def _rows(self, table: nn.Embedding) -> torch.Tensor | None:
        """The rows of the table's gradient that can be nonzero (sorted, unique), or None: all of them."""
        if not self.track_rows or table in self._dense:
            return None
        looked_up = self._looked_up.get(table, [])
        return torch.cat(looked_up).unique() if looked_up else table.weight.new_zeros(0, dtype=torch.long)

    def nonzero_rows(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """`grads` with each table's gradient cut to the rows that can be nonzero: the same total norm."""
        rows = {id(table.weight.grad): self._rows(table) for table in self.tables}
        return [grad if rows.get(id(grad)) is None else grad.index_select(0, rows[id(grad)]) for grad in grads]

    def zero(self, optimizer: torch.optim.Optimizer) -> None:
        """The tables' gradients to zero in place, every other gradient to None."""
        buffers = [(table.weight.grad, self._rows(table)) for table in self.tables]
        optimizer.zero_grad(set_to_none=True)
        for table, (grad, rows) in zip(self.tables, buffers, strict=True):
            table.weight.grad = grad.zero_() if rows is None else grad.index_fill_(0, rows, 0)
        self._looked_up.clear()
        self._dense.clear()

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._looked_up.clear()
        self._dense.clear()
        for table in self.tables:
            table.sparse = False
            table.weight.grad = None


def lr_multiplier(schedule: ScheduleName, *, warmup_steps: int, total_steps: int, num_cycles: float = 1.0,
                  power: float = 1.0, end_factor: float = 0.0) -> Callable[[int], float]:
    """step -> factor on the peak learning rate. Every schedule but `constant` warms up linearly."""
    if schedule not in ScheduleName.__args__:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(ScheduleName.__args__)}")
    if schedule != "constant" and total_steps <= 0:
        raise ValueError("total_steps must be positive")

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup_steps:
            return step / warmup_steps  # from 0, as transformers' schedules: step 0 trains at lr 0
        if schedule == "constant_with_warmup":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return max(end_factor, 1.0 - progress)
        if schedule == "cosine":
            return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "cosine_with_restarts":
            if progress >= 1.0:
                return end_factor
            return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0)))
        return end_factor + (1.0 - end_factor) * (1.0 - progress) ** power  # polynomial

    return factor


def build_schedule(optimizer: torch.optim.Optimizer, schedule: ScheduleName = "linear", *, warmup_steps: int,
                   total_steps: int, after_step: int = 0, **kwargs) -> LambdaLR:
    """The learning-rate schedule; `after_step` > 0 continues a run at that step on a new plan (the optimizer
    has been stepped by an earlier schedule, which recorded its starting rates)."""
    return LambdaLR(optimizer, lr_multiplier(schedule, warmup_steps=warmup_steps, total_steps=total_steps, **kwargs),
                    last_epoch=after_step - 1)
