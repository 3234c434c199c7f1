"""Where one fine-tuning step's time goes: forward, backward, clipping, the optimizer, zeroing the gradients.

bertforge's classifier on all-MiniLM-L6-v2 under bf16 autocast, SST-2 batches of 32 grouped by length (the
first N training sentences), fused AdamW, 2 threads; the first 10 steps are not counted. The step is the one
finetune_loop takes: clipping by optim.clip_gradients, the lookup tables' gradients in optim.LookupGradients.
`--torch-defaults` takes torch's clip_grad_norm_ and zero_grad(set_to_none=True) instead, for a side-by-side.
`--ops N` prints the N operators that took the most time (torch.profiler). Also times the optimizer without
the word embeddings (half of the parameters), the share a frozen embedding table would save.

    python benchmarks/profile_finetune_step.py --threads 2 [--torch-defaults] [--ops 25]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _speed import add_allocator_option, apply_allocator_option

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"
PHASES = ("forward", "backward", "clip", "optimizer", "zero_grad")


def batches(tokenizer, examples: int, batch_size: int = 32):
    from bertforge.tasks.classification import read_glue

    rows = read_glue("sst2", DATA / "train.tsv")[:examples]
    ids = tokenizer.encode([row.text for row in rows]).input_ids
    order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    random.Random(0).shuffle(groups)
    for group in groups:
        width = max(len(ids[i]) for i in group)
        input_ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, i in enumerate(group):
            input_ids[row, :len(ids[i])], mask[row, :len(ids[i])] = torch.tensor(ids[i]), 1
        yield input_ids, mask, torch.tensor([int(rows[i].label) for i in group])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=50, help="timed steps (after 10 untimed)")
    parser.add_argument("--torch-defaults", action="store_true",
                        help="torch's clip_grad_norm_ and zero_grad instead of the fine-tuning loop's")
    parser.add_argument("--ops", type=int, default=0, help="also print the N costliest operators")
    add_allocator_option(parser)
    args = parser.parse_args()
    if args.threads <= 0 or args.train_examples <= 0 or args.steps <= 0:
        parser.error("--threads, --train-examples and --steps: give positive whole numbers")
    if args.ops < 0:
        parser.error("--ops: give 0 (no operator table) or a positive number of rows")
    if not DATA.is_dir():
        sys.exit(f"SST-2 not found at {DATA}: see ../shared/data/README.md")
    from bertforge.checkpoint import load_model
    from bertforge.heads import BertForSequenceClassification
    from bertforge.pretrained import resolve_model
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.optim import LookupGradients, build_adamw, clip_gradients

    torch.set_num_threads(args.threads)
    apply_allocator_option(args)
    torch.manual_seed(0)
    path = resolve_model("all-minilm-l6-v2")
    model = load_model(path, BertForSequenceClassification, num_labels=2).train()
    optimizer = build_adamw(model, lr=2e-5)
    if args.torch_defaults:
        clip, zero = torch.nn.utils.clip_grad_norm_, lambda: optimizer.zero_grad(set_to_none=True)
    else:
        lookup = LookupGradients(model, track_rows=True)
        clip, zero = lambda params, bound: clip_gradients(params, bound, lookup), lambda: lookup.zero(optimizer)
    seconds = {phase: [] for phase in PHASES}
    tokens = []
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.ops else None
    for step, (input_ids, mask, labels) in enumerate(batches(BertTokenizer.from_pretrained(path), args.train_examples)):
        if step == 10 + args.steps:
            break
        if step == 10 and profiler is not None:
            profiler.start()
        marks = [time.perf_counter()]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(input_ids, mask).logits.float(), labels)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        clip(model.parameters(), 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        zero()
        marks.append(time.perf_counter())
        if step >= 10:
            for phase, start, end in zip(PHASES, marks[:-1], marks[1:], strict=True):
                seconds[phase].append(end - start)
            tokens.append(int(mask.sum()))
    total = sum(statistics.mean(v) for v in seconds.values())
    for phase, values in seconds.items():
        print(f"{phase:<10} {1000 * statistics.mean(values):7.1f} ms  {100 * statistics.mean(values) / total:5.1f}%")
    print(f"step {1000 * total:.1f} ms, {statistics.mean(tokens):.0f} real tokens per batch")
    if profiler is not None:
        profiler.stop()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))

    embedding = model.bert.embeddings.word_embeddings.weight
    others = [p for p in model.parameters() if p is not embedding]
    rest = torch.optim.AdamW(others, lr=2e-5, fused=True)
    for p in others:
        p.grad = torch.zeros_like(p)
    timings = []
    for _ in range(25):
        start = time.perf_counter()
        rest.step()
        timings.append(time.perf_counter() - start)
    print(f"optimizer without the word embeddings ({embedding.numel():,} of "
          f"{sum(p.numel() for p in model.parameters()):,} parameters): {1000 * statistics.mean(timings[5:]):.1f} ms")


if __name__ == "__main__":
    main()
