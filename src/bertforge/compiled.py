"""Kernels that torch.compile (inductor) builds for a CPU, where eager torch makes several passes over memory
that one fused loop makes once (the vocabulary loss, dropout).

Each kernel is compiled once per process for every shape (`dynamic`) and cached on disk by inductor. Two
settings matter on a CPU: `dynamic` alone lets inductor decide from the first call's sizes whether a loop runs
on several threads, and a first call on a few rows (a test, an evaluation) left a kernel on one thread for good;
`cpp.dynamic_threads` always opens a parallel region and lets OpenMP use torch.get_num_threads() threads.

Where torch.compile fails (no C++ compiler, say), `call` warns once, names why and the fix, and returns None
from then on in this process: the callers keep an eager way of their own for that, and for GPUs.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

UNAVAILABLE: list[str] = []  # why torch.compile could not build a kernel here, once it has failed


def usable(tensor: torch.Tensor) -> bool:
    """On a CPU, while torch.compile has not failed in this process."""
    return tensor.device.type == "cpu" and not UNAVAILABLE


@functools.cache
def _compiled(kernel: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(kernel, dynamic=True, options={"cpp.dynamic_threads": True})


def call(kernel: Callable[..., Any], *args: Any) -> Any | None:
    """kernel(*args) as inductor compiles it; None (after one warning per process) where that fails, and from
    then on without another try (a backward after a failed forward, say)."""
    if UNAVAILABLE:
        return None
    try:
        # torch.compile builds a kernel anew for every autocast state and requires_grad flag it meets. Neither
        # matters here (the kernels name their dtypes, and autograd Functions call them), so each is always the
        # same: a forward under autocast and its backward outside share one kernel.
        args = tuple(arg.detach() if isinstance(arg, torch.Tensor) else arg for arg in args)
        with torch.autocast("cpu", enabled=False):
            return _compiled(kernel)(*args)
    except Exception as error:  # noqa: BLE001 - any failure to build or run a compiled kernel
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        UNAVAILABLE.append(reason)
        warnings.warn(f"torch.compile fails here ({reason}), so the vocabulary loss and dropout run their slower "
                      "eager ways (1.5-4x); a C++ compiler (g++ or clang++ on the PATH, or named by $CXX) gives "
                      "the faster ones", stacklevel=3)
        return None
