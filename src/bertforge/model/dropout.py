"""Dropout (Srivastava et al., 2014) with a cheaper random mask on CPUs.

torch's CPU dropout draws one Bernoulli sample per element from the Mersenne Twister, serially: in a fine-tuning
step of all-MiniLM-L6-v2 on SST-2 (bf16, 2 threads) its 20 dropouts took 15 ms of 119 (13%), more than the
gradient clipping and the optimizer together. Here each 64-bit draw of the same generator is cut into four
16-bit lanes, and a lane below a threshold drops its element: four elements per draw and no per-element
sampling, 4-5x faster forward and backward (benchmarks/profile_finetune_step.py).

Where torch.compile works (bertforge.compiled) and the tensor is large (2M elements or more: below, building
the kernel costs a short job more than the hash saves; see _COMPILED_MIN_ELEMENTS), one fused loop does it all:
each element's 16-bit lane is a hash (splitmix64's finaliser) of its index and a seed drawn once per call from
torch's generator, so no random numbers are written at all, and the backward recomputes the same mask from the
seed: 3-4x faster than the lanes above ([4096, 256] bf16: 0.75 against 2.5 ms; attention probabilities
[32, 4, 128, 128]: 1.34 against 5.3 ms, 2 threads, Xeon with AMX).

The drop probability is rounded to a multiple of 1/65536 (0.1 becomes 0.1000061); the kept elements are scaled
by the inverse of the true keep probability, so the expected output is still exactly the input. Off a CPU, and
for rates that round to 0 or 1, torch's own dropout runs. Seeding is torch's: `torch.manual_seed` makes it
repeat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertforge import compiled

_LANES = 1 << 16  # values a 16-bit lane takes
_INT64 = (-(1 << 63), (1 << 63) - 1)  # torch.randint's bounds for every 64-bit pattern (high is exclusive)
_MIX = (-4658895280553007687, -7723592293110705685)  # splitmix64's multipliers 0xbf58…e5b9, 0x94d0…11eb as int64
# From 2M elements on (attention probabilities of pre-training: mini [32, 4, 128, 128], base; base's hidden
# states). Below, a fine-tuning step of all-MiniLM-L6-v2 on SST-2 (dropouts of 0.1-1.7M elements) runs no faster
# hashed, while building the kernels at the start of a process cost its 125-step benchmark 4 s (21 against 17 s);
# a mini pre-training step with dropout 0.1 gains 1.031x from this threshold, 1.060x from 2^18 (its 1M hidden
# states too), whose kernels a job of minutes repays.
_COMPILED_MIN_ELEMENTS = 1 << 21


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element of x with probability p (to 1/65536 on CPUs) and scale the rest by 1 / (1 - p)."""
    if not training or p == 0:
        return x
    dropped = round(p * _LANES)  # lanes (of 65536) that drop their element
    if x.device.type != "cpu" or not 0 < dropped < _LANES:
        return F.dropout(x, p, training)
    if compiled.usable(x) and x.numel() >= _COMPILED_MIN_ELEMENTS:
        seed = torch.randint(*_INT64, (1,), dtype=torch.int64)  # one draw: torch.manual_seed repeats the mask
        return _HashedDropout.apply(x, seed, dropped)
    n = x.numel()
    words = torch.randint(*_INT64, ((n + 3) // 4,), dtype=torch.int64)
    lanes = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768 … 32767
    keep = lanes >= dropped - _LANES // 2  # the lowest `dropped` values drop
    return x * keep.to(x.dtype).mul_(_LANES / (_LANES - dropped))


def _unsigned_shift(z: torch.Tensor, bits: int) -> torch.Tensor:
    return (z >> bits) & ((1 << (64 - bits)) - 1)  # torch's >> on int64 copies the sign bit


def _hashed_dropout(x: torch.Tensor, seed: torch.Tensor, dropped: int) -> torch.Tensor:
    """x ([n], flat) with the elements whose hashed lane falls below `dropped` zeroed and the rest scaled (one
    loop once compiled); the same seed gives the same mask, which is how the backward finds it."""
    z = torch.arange(x.numel(), device=x.device, dtype=torch.int64) + seed
    z = (z ^ _unsigned_shift(z, 30)) * _MIX[0]
    z = (z ^ _unsigned_shift(z, 27)) * _MIX[1]
    lane = (z ^ _unsigned_shift(z, 31)) & (_LANES - 1)  # uniform over 0 … 65535
    return torch.where(lane >= dropped, x * (_LANES / (_LANES - dropped)), 0).to(x.dtype)


def _run_hashed(x: torch.Tensor, seed: torch.Tensor, dropped: int) -> torch.Tensor:
    # Flat, so that one kernel per dtype serves every shape and rank (each new rank would cost seconds to build).
    flat = x.reshape(-1)
    result = compiled.call(_hashed_dropout, flat, seed, dropped)
    if result is None:  # torch.compile failed: eager, once
        result = _hashed_dropout(flat, seed, dropped)
    return result.view(x.shape)


class _HashedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, seed: torch.Tensor, dropped: int) -> torch.Tensor:
        ctx.save_for_backward(seed)
        ctx.dropped = dropped
        return _run_hashed(x, seed, dropped)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (seed,) = ctx.saved_tensors
        return _run_hashed(grad, seed, ctx.dropped), None, None


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, same place in a state dict: none) with the cheaper CPU mask of `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
