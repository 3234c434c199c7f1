"""What a matmul shape not seen before costs, and what padding rows to a multiple saves (matmul_row_multiple).

On a CPU a bf16 matmul goes to oneDNN, which builds a kernel the first time it meets a shape. Two jobs meet new
shapes all the time: pre-training, whose masking selects a different number of tokens every batch (the sparse MLM
head and the last layer run on those), and inference over packed batches, whose token count is new with nearly
every batch of new texts. Both now pad those rows to a multiple of 64; this benchmark runs each job both ways in
one process, taking turns, always on inputs not seen before:

- pre-training: bertforge's mini step (bench_pretrain's: batch 32 × 128, bf16 autocast, every token masked with
  probability 15% afresh every step as transformers' collator does, so the count is new nearly every step),
  `row_multiple` 64 against 1, alternating blocks of steps; median step time of each. bertforge's own masking
  on full rows of one length gives at most batch + 1 counts, which the kernel cache soon holds (docs/speed.md);
- embeddings: the bf16 Predictor on all-MiniLM-L6-v2 over slices of 2,000 held-out texts it has not embedded
  before (SST-2 dev sentences and Wikipedia, shuffled: bench_inference's texts), with filler tokens against
  without, alternating slices; then each slice once more (its shapes seen) to show what the first pass lost.

Runs only where bf16 is native (elsewhere nothing builds kernels per shape: fp32 goes to MKL).

    python benchmarks/bench_new_shapes.py --threads 2        # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _speed import add_allocator_option, apply_allocator_option
from bench_inference import load_texts
from bench_pretrain import build_models, make_batch, ours_loss

from bertforge.hardware import MATMUL_ROW_MULTIPLE, bf16_skip_reason
from bertforge.inference import predictor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pretraining(args) -> None:
    config, model, _ = build_models("mini", with_peers=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    seeds = iter(range(1, 1 << 30))
    times: dict[int, list[float]] = {MATMUL_ROW_MULTIPLE: [], 1: []}

    def step(multiple: int) -> float:
        b = make_batch(config, 32, 128, args.rate, seed=next(seeds))  # a fresh masking: a new masked count
        start = time.perf_counter()
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], masked_positions=b["masked"],
                    bias_in_loss=True, row_multiple=multiple)
        ours_loss(out, b).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    with torch.autocast("cpu", dtype=torch.bfloat16):
        for multiple in times:
            step(multiple)
        for _ in range(args.rounds):
            for multiple, seconds in times.items():
                seconds += [step(multiple) for _ in range(4)]
    median = {multiple: statistics.median(seconds) for multiple, seconds in times.items()}
    print(f"\n== pre-training, mini, bf16, batch 32 x 128, {args.rate:.0%} masked afresh every step ==")
    for multiple, seconds in median.items():
        print(f"  row_multiple {multiple:>3}: median step {1000 * seconds:6.1f} ms")
    print(f"  padded / not: {median[1] / median[MATMUL_ROW_MULTIPLE]:.2f}x")


def embeddings(args) -> None:
    from bertforge.checkpoint import load_model
    from bertforge.inference.embed import embed_texts
    from bertforge.pretrained import resolve_model
    from bertforge.tokenizer import BertTokenizer

    path = resolve_model("all-minilm-l6-v2")
    model, tokenizer = load_model(path), BertTokenizer.from_pretrained(path)
    texts = load_texts(DATA, 2 * args.slices * args.texts)
    runner = predictor.Predictor(model, tokenizer, max_length=256, precision="bf16")
    padded_multiple = predictor.matmul_row_multiple
    variants = {"fillers to a multiple of 64": padded_multiple, "no fillers": lambda *_: 1}
    rates: dict[str, dict[str, list[float]]] = {name: {"first": [], "again": []} for name in variants}
    slices = [texts[i:i + args.texts] for i in range(0, len(texts), args.texts)]
    try:
        for index, chunk in enumerate(slices):
            name = list(variants)[index % 2]  # alternate slices
            predictor.matmul_row_multiple = variants[name]
            for when in ("first", "again"):
                start = time.perf_counter()
                embed_texts(model, tokenizer, chunk, normalize=True, max_length=256, predictor=runner)
                rates[name][when].append(len(chunk) / (time.perf_counter() - start))
    finally:
        predictor.matmul_row_multiple = padded_multiple
    print(f"\n== embeddings, all-MiniLM-L6-v2, bf16 Predictor, {len(slices)} slices of {args.texts} new texts ==")
    for name, by_pass in rates.items():
        print(f"  {name:<28} first pass {statistics.mean(by_pass['first']):6.0f} texts/s "
              f"({', '.join(f'{r:.0f}' for r in by_pass['first'])}); "
              f"again {statistics.mean(by_pass['again']):6.0f}")
    first = {name: statistics.mean(by_pass["first"]) for name, by_pass in rates.items()}
    print(f"  first pass, fillers / none: {first['fillers to a multiple of 64'] / first['no fillers']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.15, help="share of tokens masked in pre-training")
    parser.add_argument("--rounds", type=int, default=8, help="pre-training: rounds of 4 steps each way")
    parser.add_argument("--texts", type=int, default=2000, help="embeddings: texts per slice")
    parser.add_argument("--slices", type=int, default=3, help="embeddings: slices each way")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pretraining", "embeddings"])
    add_allocator_option(parser)
    args = parser.parse_args()
    if min(args.threads, args.rounds, args.texts, args.slices) <= 0 or not 0 < args.rate < 1:
        parser.error("--threads, --rounds, --texts and --slices: positive whole numbers; --rate: between 0 and 1")
    reason = bf16_skip_reason("cpu")
    if reason is not None:
        sys.exit(f"nothing to measure: {reason} (fp32 matmuls build no kernel per shape)")
    torch.set_num_threads(args.threads)
    apply_allocator_option(args)
    if "pretraining" not in args.skip:
        pretraining(args)
    if "embeddings" not in args.skip:
        if not DATA.is_dir():
            sys.exit(f"the held-out texts are not at {DATA}: see ../shared/data/README.md")
        embeddings(args)


if __name__ == "__main__":
    main()
