"""Optimizers and learning-rate schedules (BERT Appendix A.2: Adam with decoupled weight decay 0.01,
linear warmup over the first steps, then linear decay).

Biases and LayerNorm weights take no weight decay, as in the released BERT optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
