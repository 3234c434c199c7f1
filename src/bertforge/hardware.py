"""What this machine computes fast: whether it has native bf16, its measured matmul peak, and where a matmul of a
new shape first costs a kernel build (`matmul_row_multiple`); and the one setting of the C allocator that
training jobs change (`keep_freed_memory`).

A CPU without AVX-512 BF16 or AMX still runs a bf16 matmul, but emulated: about 1 GFLOP/s against ~100 for
fp32 on a 2-core development machine. A bf16 timing there measures the emulation, so every bf16 figure first
asks `bf16_skip_reason`. GPUs from Ampere (compute capability 8.0) on have bf16 tensor cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import time

import torch

# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s (without 2:4 sparsity). Looked up by
# substring of torch.cuda.get_device_name, most specific name first ("A100" before "A10", "L40S" before "L4").
DATASHEET_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = (1 << 31) - 1

# Rows a variable-sized matmul operand is padded to a multiple of, so that its shapes repeat from batch to batch.
# On a CPU, a bf16 or fp16 matmul goes to oneDNN, which builds (compiles) a kernel the first time it meets a
# shape: 2-3 ms for an encoder layer's projections, 10-20 ms for a 30k-word vocabulary projection (2-core Xeon
# with AMX), and it keeps the last 1,024. Row counts that change from batch to batch — the masked tokens of
# pre-training, the real tokens of a packed inference batch — paid that at nearly every batch: a mini pre-training
# step with a new masked count took 306 ms against 240 with the shapes built before, and embedding new texts ran
# at 513 texts/s against 622 once padded (docs/speed.md). 64 rows waste at most 63 (~5% of a 600-row step).
# fp32 on a CPU (MKL) and every GPU library build nothing per shape.
MATMUL_ROW_MULTIPLE = 64


def matmul_row_multiple(precision: str, device: str | torch.device = "cpu") -> int:
    """MATMUL_ROW_MULTIPLE where a new matmul shape costs a kernel build (a CPU computing in bf16 or fp16), else
    1: padding rows there would only add work."""
    return MATMUL_ROW_MULTIPLE if torch.device(device).type == "cpu" and precision in ("bf16", "fp16") else 1


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a process frees for its next allocations, instead of handing it back
    to the system; returns whether it took effect (Linux with glibc), once per process.

    A training step frees and allocates the same large blocks (activations, gradients, casts) every step. By
    default glibc serves every block over its mmap threshold (at most 32 MB) with a fresh mapping and unmaps it
    on free, and trims freed memory at the top of the heap, so the next step page-faults on every page it
    writes first. With no mappings (M_MMAP_MAX 0) and no trimming below 2 GB of free space, the blocks stay and
    are reused: a mini pre-training step (bf16, 2 threads) took 4-13% less time
    (`benchmarks/bench_pretrain.py --no-peers`), and transformers' own step half the time.
    The price is that the process holds on to its peak memory until it exits, which suits a training job and
    not a server: `pretrain` and `finetune` call this, `serve` does not."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc's; musl has none
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """True where bf16 matmuls run on hardware made for them (bf16 tensor cores; AVX-512 BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def bf16_skip_reason(device: str | torch.device = "cpu") -> str | None:
    """None where bf16 is native; otherwise the line a benchmark prints instead of a meaningless number."""
    device = torch.device(device)
    if native_bf16(device):
        return None
    return f"skipped: this {'GPU' if device.type == 'cuda' else 'CPU'} has no native bf16"


def datasheet_peak(device: str | torch.device) -> float | None:
    """The vendor's dense bf16 peak of a GPU in FLOP/s, or None for a CPU or a GPU not in the table."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in DATASHEET_BF16_TFLOPS if key in name), None)


def matmul_peak(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> float:
    """FLOP/s of a large square matmul at the current thread count: the most this machine gives a matmul.
    Measured once per process for each (dtype, device, threads)."""
    device = torch.device(device)
    if dtype == torch.bfloat16 and not native_bf16(device):
        raise ValueError(f"{device} has no native bf16: a bf16 peak would time the emulation")
    return _measured_peak(dtype, str(device), torch.get_num_threads())


@functools.cache
def _measured_peak(dtype: torch.dtype, device: str, threads: int) -> float:
    del threads  # part of the cache key only: the peak scales with the threads torch may use
    on_gpu = device.startswith("cuda")
    # Large enough that the matmul kernel's steady state dominates: 2·n³ = 17 GFLOP on a CPU, 1.1 TFLOP on a GPU.
    size, per_timing = (8192, 20) if on_gpu else (2048, 1)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    a @ b  # first call: allocation and kernel choice
    sync()
    best, spent, timings = float("inf"), 0.0, 0
    while timings < 3 or spent < 1.0:
        start = time.perf_counter()
        for _ in range(per_timing):
            a @ b
        sync()
        elapsed = time.perf_counter() - start
        best, spent, timings = min(best, elapsed / per_timing), spent + elapsed, timings + 1
    return 2 * size**3 / best
