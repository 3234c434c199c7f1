"""Training tokens/s of the budget recipe against today's defaults (`--recipe bert`), side by side in one
process on the same model shape and corpus, with the steps in between so each gain has its source:

    bert                  MLM + NSP pairs, padded per batch, 15% masking, dropout 0.1, fp32 (the paper's)
    bert + bf16           the same under bf16 autocast
    mlm packed + bf16     MLM only, rows packed to the full length (no padding), no dropout, 15% masking
    budget                the recipe: packed, bf16 where native, 30% masking, no dropout
  and the recipe with one choice undone, as benchmarks/pretrain_budget.py's variants (same names):
    budget_mask15, budget_nsp_pairs, budget_unpacked, budget_dropout

The sides take turns step by step (same threads, same machine state), and tokens are *real* tokens: a
padded position is work, not progress.

    python benchmarks/bench_recipe_speed.py --data runs/wiki16k --preset mini --steps 12 --threads 2
    python benchmarks/bench_recipe_speed.py --data runs/wiki16k --sides bert budget budget_mask15 \
        budget_nsp_pairs budget_unpacked budget_dropout      # a CPU without native bf16: no bf16 sides
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bertforge.data.shards import PreparedCorpus
from bertforge.training.distributed import World
from bertforge.training.pretrain import (
    BatchMasker,
    ExampleStream,
    PretrainConfig,
    Trainer,
    build_model,
    build_optimizer,
    collate_examples,
)

SIDES: dict[str, dict] = {
    "bert": {"recipe": "bert"},
    "bert + bf16": {"recipe": "bert", "precision": "bf16"},
    "mlm packed + bf16": {"recipe": "budget", "masking_rate": 0.15},
    "budget": {"recipe": "budget"},
    "budget_mask15": {"recipe": "budget", "masking_rate": 0.15},
    "budget_nsp_pairs": {"recipe": "budget", "objective": "mlm_nsp", "packing": False},
    "budget_unpacked": {"recipe": "budget", "packing": False},
    "budget_dropout": {"recipe": "budget", "dropout": 0.1},
    "budget + compile": {"recipe": "budget", "compile": True},
}


def side(name: str, corpus: PreparedCorpus, tokenizer, args: argparse.Namespace, out: Path) -> dict:
    cfg = PretrainConfig.from_options(data=corpus.directory, output_dir=out / name, preset=args.preset, steps=1000,
                                      batch_size=args.batch_size, **SIDES[name])
    cfg.use_device(torch.device("cpu"))
    cfg.plan(1000)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer.vocab_size)
    trainer = Trainer(cfg, model, model, build_optimizer(cfg, model), None,
                      torch.amp.GradScaler("cpu", enabled=False), World(), torch.device("cpu"), tokenizer.mask_id)
    if cfg.optim.compile:
        trainer.net = torch.compile(trainer.net)
    stream = ExampleStream(list(corpus.shards("train")), cfg.corpus.example_settings(), seed=0)
    return {"cfg": cfg, "trainer": trainer, "stream": stream, "masker": BatchMasker.for_training(cfg, tokenizer),
            "seconds": [], "real": 0, "padded": 0}


def step(state: dict, tokenizer, index: int) -> None:
    started = time.perf_counter()
    batch = collate_examples(state["stream"].take(state["cfg"].optim.batch_size), state["stream"].settings, tokenizer)
    state["trainer"].forward_backward(batch, state["masker"](batch, index))
    state["trainer"].apply_gradients()
    state["seconds"].append(time.perf_counter() - started)
    state["real"] += int(batch.attention_mask.sum())
    state["padded"] += batch.input_ids.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per side (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per side first (a compiled side compiles again for new shapes)")
    parser.add_argument("--sides", nargs="+", choices=list(SIDES), default=["bert", "bert + bf16", "mlm packed + bf16",
                                                                          "budget"])
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps {args.steps} --warmup {args.warmup}: give at least 1 timed step and no negative warm-up")
    torch.set_num_threads(args.threads)
    corpus = PreparedCorpus.open(args.data)
    tokenizer = corpus.tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        states = {name: side(name, corpus, tokenizer, args, Path(tmp)) for name in args.sides}
        for i in range(args.steps + args.warmup):
            for state in states.values():
                step(state, tokenizer, i)
                if i < args.warmup:  # warm-up: one-off allocations are not the steady state
                    state.update(seconds=[], real=0, padded=0)
    base = None
    print(f"{args.preset}, batch {args.batch_size}, {args.threads} threads, {args.steps} steps per side, "
          f"torch {torch.__version__}")
    print(f"{'side':<20} {'s/step':>8} {'real tok/s':>11} {'padding':>8} {'ratio':>6}")
    for name, state in states.items():
        seconds = sum(state["seconds"])
        rate = state["real"] / seconds
        base = base or rate
        print(f"{name:<20} {statistics.median(state['seconds']):>8.3f} {rate:>11,.0f} "
              f"{1 - state['real'] / state['padded']:>7.1%} {rate / base:>5.2f}x")


if __name__ == "__main__":
    main()
