"""The two hand-written kernels against the torch calls they replace, side by side in one process:

    attention   F.scaled_dot_product_attention (torch picks its fused CPU kernel) vs the batched matrix multiplies
                that bertforge's `attend` runs in bf16 on a CPU (`written_out_attention`): training (forward +
                backward) and inference (forward only; `attend` keeps SDPA for inference whose scores outgrow the
                cache, `_WRITTEN_OUT_MAX_SCORES`); a packed block-diagonal mask, or `--key-padding` for the
                [B, 1, 1, S] mask of padded rows
    vocab loss  F.cross_entropy(logits.float(), …) vs bertforge's `summed_cross_entropy`, forward + backward: its
                two kernels compiled by torch.compile (a CPU's way), then its chunked eager way (a GPU's, and the
                fallback where torch.compile fails)

Each pair takes turns call by call; the median of each is printed with the ratio. bf16 is the default;
`--dtype fp32` shows why fp32 stays on SDPA (level there).

    python benchmarks/bench_attention.py --threads 2
    python benchmarks/bench_attention.py --threads 2 --heads 12 --head-size 32 --batch 64 --length 32 --key-padding
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _speed import add_allocator_option, apply_allocator_option

from bertforge import compiled
from bertforge.model.attention import written_out_attention
from bertforge.training.vocab_loss import summed_cross_entropy


def timed_pair(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, the calls taking turns (2 untimed rounds first)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(repeats + 2):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if index >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def attention_calls(args: argparse.Namespace, dtype: torch.dtype) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.length, args.head_size)
    q, k, v = (torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3))
    if args.key_padding:  # rows of padded texts, each at least half as long as the longest
        lengths = torch.randint(args.length // 2, args.length + 1, (args.batch,), generator=g)
        mask = (torch.arange(args.length)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, T]
    else:
        window = torch.randint(0, 3, (args.batch, args.length), generator=g).sort(-1).values  # 1-3 packed windows
        mask = window[:, None, :, None] == window[:, None, None, :]  # [B, 1, T, T]
    grad = torch.randn(shape, generator=g).to(dtype)

    def train(fn):
        return lambda: fn(q, k, v, mask).backward(grad)

    def infer(fn):
        def call():
            with torch.inference_mode():
                fn(q, k, v, mask)
        return call

    sdpa = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
    ours = written_out_attention
    return ({"SDPA": train(sdpa), "written out": train(ours)}, {"SDPA": infer(sdpa), "written out": infer(ours)})


def loss_calls(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.positions, args.vocab, generator=g) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.positions,), generator=g)

    def torch_loss():
        F.cross_entropy(logits.float(), labels, reduction="sum").backward()
        logits.argmax(-1)  # the accuracy statistic, as pre-training counts it
        logits.grad = None  # as a training step's zero_grad(set_to_none=True): no accumulation into the last one

    def ours(chunked: bool = False):
        def call():
            # chunked: the eager way, a GPU's and the fallback where torch.compile fails (as if it had failed here)
            state = list(compiled.UNAVAILABLE)
            if chunked:
                compiled.UNAVAILABLE.append("chunked by the benchmark")
            try:
                summed_cross_entropy(logits, labels)[0].backward()  # the accuracy comes with it
            finally:
                compiled.UNAVAILABLE[:] = state  # a real failure stays on record
            logits.grad = None
        return call

    return ({"F.cross_entropy": torch_loss, "summed_cross_entropy": ours()},
            {"F.cross_entropy": torch_loss, "chunked (eager)": ours(chunked=True)})


def report(title: str, medians: dict[str, float]) -> None:
    (base_name, base), (name, ms) = medians.items()
    print(f"{title:<34} {base_name} {base:7.2f} ms   {name} {ms:7.2f} ms   {base / ms:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--key-padding", action="store_true", help="a key-padding mask instead of packed windows")
    parser.add_argument("--positions", type=int, default=1210, help="selected positions: 30%% of 32 x 128")
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=15)
    add_allocator_option(parser)
    args = parser.parse_args()
    for option in ("threads", "batch", "heads", "head_size", "length", "positions", "vocab", "repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} {getattr(args, option)}: give a positive whole number")
    torch.set_num_threads(args.threads)
    apply_allocator_option(args)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"{args.threads} threads, torch {torch.__version__}, {args.dtype}")
    train, infer = attention_calls(args, dtype)
    shape = f"[{args.batch}, {args.heads}, {args.length}, {args.head_size}]"
    report(f"attention {shape}, fwd+bwd", timed_pair(train, args.repeats))
    report(f"attention {shape}, inference", timed_pair(infer, args.repeats))
    fused, chunked = loss_calls(args, dtype)
    report(f"vocab loss [{args.positions}, {args.vocab}], fwd+bwd", timed_pair(fused, args.repeats))
    report("  the same, the chunked eager way", timed_pair(chunked, args.repeats))


if __name__ == "__main__":
    main()
