"""Where one pre-training step's time goes: the encoder and heads forward, the vocabulary loss, the backward,
the optimizer, zeroing the gradients.

bertforge's BertForPreTraining as `benchmarks/bench_pretrain.py` runs it (same model, batch and step: the
projection at the masked positions, the decoder bias inside the loss, fused AdamW), under bf16 autocast where the
processor computes bf16 natively (else fp32); 5 steps are not counted, the medians of `--steps` are printed.
Wall-clock phases, so nothing is overstated the way the torch profiler's per-operator times are for
memory-bound operators.

    python benchmarks/profile_pretrain_step.py --threads 2 [--preset mini] [--rate 0.15] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _speed import add_allocator_option, apply_allocator_option, precision_context
from bench_pretrain import build_models, make_batch, ours_forward, ours_loss

from bertforge.config import PRESETS
from bertforge.hardware import bf16_skip_reason

PHASES = ("forward", "vocabulary loss", "backward", "optimizer", "zero_grad")


def timed_step(model, optimizer, batch: dict) -> list[float]:
    """One step as bench_pretrain.ours_step runs it, with a clock reading between its phases."""
    marks = [time.perf_counter()]
    out = ours_forward(model, batch)
    marks.append(time.perf_counter())
    loss = ours_loss(out, batch)
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    optimizer.step()
    marks.append(time.perf_counter())
    optimizer.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())
    return [end - start for start, end in zip(marks[:-1], marks[1:], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="mini", choices=list(PRESETS))
    parser.add_argument("--rate", type=float, default=0.15, help="share of tokens masked")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 5 untimed)")
    add_allocator_option(parser)
    args = parser.parse_args()
    if args.threads <= 0 or args.steps <= 0 or not 0 < args.rate < 1:
        parser.error("--threads and --steps: give positive whole numbers; --rate: a share between 0 and 1")
    torch.set_num_threads(args.threads)
    apply_allocator_option(args)
    precision = "bf16" if bf16_skip_reason("cpu") is None else "fp32"
    config, model, _ = build_models(args.preset, with_peers=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    seconds: list[list[float]] = []
    with precision_context(precision, "cpu"):
        for step in range(5 + args.steps):  # masked afresh every step, as in training (bench_pretrain.py)
            phases = timed_step(model, optimizer, make_batch(config, 32, 128, args.rate, seed=step))
            if step >= 5:
                seconds.append(phases)
    medians = [statistics.median(column) for column in zip(*seconds, strict=True)]
    print(f"{args.preset}, {precision}, batch 32 x 128, {args.rate:.0%} masked, {args.threads} threads")
    for phase, value in zip(PHASES, medians, strict=True):
        print(f"{phase:<16} {1000 * value:7.1f} ms  {100 * value / sum(medians):5.1f}%")
    print(f"step {1000 * statistics.median(sum(s) for s in seconds):.1f} ms (median of the step sums)")


if __name__ == "__main__":
    main()
