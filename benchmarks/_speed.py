"""What the speed benchmarks share: systems timed side by side, bf16 only where it is native, the MFU line,
and the ratios against the strongest peer.

A `System` is one way to do the job (a peer's setting or ours) on a list of inputs. `race` warms each up on a
few inputs, then times them in turns, `repeats` rounds, and keeps each one's best round: a shared, noisy
machine slows every system alike. A bf16 system on hardware
without native bf16 is not run: its line says why (hardware.bf16_skip_reason).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bertforge.flops import mfu
from bertforge.hardware import bf16_skip_reason, datasheet_peak, keep_freed_memory, matmul_peak


@dataclass
class System:
    name: str
    run: Callable[[Sequence], object]  # inputs -> outputs in input order
    precision: str = "fp32"  # fp32 | bf16: what the MFU line and the native-bf16 check read
    ours: bool = False
    autocast: bool = True  # a bf16 run under autocast; False: the system sets its precision itself (bf16 weights)


@dataclass
class Timing:
    seconds: float
    output: object


def precision_context(precision: str, device: str | torch.device = "cpu"):
    """fp32: nothing; bf16: autocast to bf16, as `pretrain --precision bf16` and the Trainer's bf16=True do."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")


def skip_reason(system: System, device: str | torch.device = "cpu") -> str | None:
    return bf16_skip_reason(device) if system.precision == "bf16" else None


def _run_context(system: System, device: str | torch.device):
    """Autocast for a bf16 system that asks for it; nothing for one that sets its precision itself."""
    return precision_context(system.precision if system.autocast else "fp32", device)


def race(systems: Sequence[System], inputs: Sequence, repeats: int, device: str | torch.device = "cpu",
         sync: Callable[[], None] = lambda: None, warmup: int = 64) -> dict[str, Timing]:
    """Best wall-clock of each runnable system on `inputs` over `repeats` rounds, the systems taking turns in
    each round, after one untimed call each on the first `warmup` inputs (allocation, kernel choice)."""
    runnable = [s for s in systems if skip_reason(s, device) is None]
    for system in runnable:
        with _run_context(system, device):
            system.run(inputs[:warmup])
    timings: dict[str, Timing] = {}
    for _ in range(repeats):
        for system in runnable:
            with _run_context(system, device):
                start = time.perf_counter()
                output = system.run(inputs)
                sync()
                elapsed = time.perf_counter() - start
            best = timings.get(system.name)
            if best is None or elapsed < best.seconds:
                timings[system.name] = Timing(elapsed, output)
    return timings


def mfu_text(flops: float, seconds: float, precision: str, device: str | torch.device = "cpu") -> str:
    """'GFLOP/s, MFU x% of the measured <precision> matmul peak' (+ the datasheet peak on a GPU)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    achieved = flops / seconds
    text = f"{achieved / 1e9:8.1f} GFLOP/s  MFU {mfu(flops, seconds, matmul_peak(dtype, device)):5.1%}"
    nominal = datasheet_peak(device) if precision == "bf16" else None
    if nominal is not None:
        text += f" ({mfu(flops, seconds, nominal):5.1%} of the datasheet's {nominal / 1e12:.0f} TFLOP/s)"
    return text


def peak_text(device: str | torch.device = "cpu") -> str:
    """One line naming the peaks MFU is measured against."""
    parts = [f"fp32 {matmul_peak(torch.float32, device) / 1e9:,.0f} GFLOP/s"]
    reason = bf16_skip_reason(device)
    parts.append(f"bf16 {matmul_peak(torch.bfloat16, device) / 1e9:,.0f} GFLOP/s" if reason is None
                 else f"bf16 {reason}")
    return f"measured matmul peak at {torch.get_num_threads()} threads: " + ", ".join(parts)


def print_ratios(timings: dict[str, Timing], systems: Sequence[System]) -> None:
    """Each of our systems against every peer that ran, then against the strongest (fastest) peer."""
    peers = [s.name for s in systems if not s.ours and s.name in timings]
    for ours in (s.name for s in systems if s.ours and s.name in timings):
        for peer in peers:
            print(f"  {ours} / {peer}: {timings[peer].seconds / timings[ours].seconds:.2f}x")
        if peers:
            strongest = min(peers, key=lambda name: timings[name].seconds)
            print(f"  {ours} / strongest peer ({strongest}): "
                  f"{timings[strongest].seconds / timings[ours].seconds:.2f}x")


def add_allocator_option(parser) -> None:
    """--glibc-defaults, for the training benchmarks (see apply_allocator_option)."""
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="leave glibc's malloc as it is; by default the process keeps freed memory, as the "
                             "training jobs do (hardware.keep_freed_memory), which applies to every side alike")


def apply_allocator_option(args) -> None:
    """Keep freed memory, as `bertforge pretrain` and `finetune` do, unless --glibc-defaults; print which."""
    kept = not args.glibc_defaults and keep_freed_memory()
    print(f"freed memory kept for reuse (hardware.keep_freed_memory): {'yes' if kept else 'no'}")
