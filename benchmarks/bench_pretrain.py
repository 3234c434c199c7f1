"""Pre-training step throughput: bertforge vs `transformers.BertForPreTraining`, each in fp32
and under bf16 autocast, at one or more model shapes; transformers with SDPA and with eager attention, and with
eager attention under torch.compile (the Trainer's `torch_compile=True`).

Same config (default: the `mini` preset, vocabulary 30,522), same weights, same batches (sequence 128,
batch 32, 15% of tokens masked, NSP labels), one step = forward + backward + fused AdamW, in one process. Every
row of a batch is full, as packed pre-training rows are (no padding). Each step masks afresh, as training does,
so the masked count changes from step to step (and with it the shapes of a sparse MLM head's matmuls: see
BertForPreTraining's row_multiple); `--same-batch` repeats one batch, as this benchmark did before 2026-12-08.
The systems take turns step by step, all on the same batch at each step, so that a shared, noisy machine slows
all alike; the median step time of each gives tokens/s. transformers' bf16 step, which writes [B·T, V] logits
and their fp32 softmax, moves by a third from one run of 10 steps to the next on a 2-core CPU (3.04x and 4.80x on
one day): quote runs of 40 steps. The first step's fp32 losses are compared to show both compute the same thing
(bertforge projects onto the vocabulary only at the masked positions, and its last layer finishes only those
and [CLS]; transformers everywhere).
bf16 runs only where the processor computes it natively. MFU counts the useful matmul work (encoder + MLM head
at the masked positions, ×3 for training; the last layer only at the tokens the heads read; flops.py) against
this machine's measured matmul peak of that precision.

The process keeps the memory it frees for reuse (hardware.keep_freed_memory, what `bertforge pretrain` does),
for every side alike: it makes transformers' bf16 step ~2x faster, whose dense vocabulary projection allocates
hundreds of MB a step. `--glibc-defaults` leaves the allocator as it is (the figures before 2026-12-07).

    python benchmarks/bench_pretrain.py --threads 2 --steps 40                      # mini, ~6 min on 2 cores
    python benchmarks/bench_pretrain.py --threads 2 --presets base --steps 3 --warmup 1   # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from _speed import add_allocator_option, apply_allocator_option, mfu_text, peak_text, precision_context

from bertforge.checkpoint import to_hf_state_dict
from bertforge.config import PRESETS, BertConfig
from bertforge.flops import encoder_flops, mlm_head_flops
from bertforge.hardware import bf16_skip_reason, matmul_row_multiple
from bertforge.heads import BertForPreTraining
from bertforge.training.pretrain import losses


def make_batch(config: BertConfig, batch: int, seq: int, rate: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=g)
    ids[:, 0], ids[:, -1], ids[:, seq // 2] = 101, 102, 102  # [CLS] A [SEP] B [SEP]
    types = torch.zeros_like(ids)
    types[:, seq // 2 + 1:] = 1
    special = (ids == 101) | (ids == 102)
    masked = (torch.rand(ids.shape, generator=g) < rate) & ~special
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    inputs = torch.where(masked, torch.full_like(ids, 103), ids)
    return {"input_ids": inputs, "token_type_ids": types, "attention_mask": torch.ones_like(ids),
            "labels": labels, "masked": masked, "nsp": torch.randint(0, 2, (batch,), generator=g)}


def ours_forward(model, b):
    """bertforge's forward as `pretrain` runs it (pretrain.model_inputs): the projection at the masked positions,
    its rows padded where new matmul shapes cost a kernel build, the bias left to the loss."""
    device = b["input_ids"].device
    precision = "bf16" if torch.is_autocast_enabled(device.type) else "fp32"
    return model(b["input_ids"], b["attention_mask"], b["token_type_ids"], masked_positions=b["masked"],
                 bias_in_loss=True, row_multiple=matmul_row_multiple(precision, device))


def ours_loss(out, b) -> torch.Tensor:
    """Mean MLM + mean NSP cross-entropy, the MLM mean's 1/count inside the vocabulary loss (pretrain's losses)."""
    stats = losses(out, b["labels"][b["masked"]], b["nsp"], mlm_weight=1 / int(b["masked"].sum()))
    return stats["mlm_term"] + stats["nsp_sum"] / len(b["nsp"])


def ours_step(model, optimizer, b) -> float:
    loss = ours_loss(ours_forward(model, b), b)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def hf_step(model, optimizer, b) -> float:
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                labels=b["labels"], next_sentence_label=b["nsp"])
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def build_models(preset: str, with_peers: bool = True):
    """bertforge's BertForPreTraining and transformers' with SDPA and with eager attention (the faster of the two
    in bf16 on a CPU, where SDPA's fused kernel is slow), all with the same weights and dropout off."""
    config = BertConfig.from_preset(preset, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    ours = BertForPreTraining(config).train()
    peers = {}
    for attention in ("sdpa", "eager") if with_peers else ():
        import transformers

        hf_config = transformers.BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=config.layer_norm_eps,
            attn_implementation=attention,
        )
        theirs = transformers.BertForPreTraining(hf_config).train()
        assert theirs.config._attn_implementation == attention, theirs.config._attn_implementation
        missing, unexpected = theirs.load_state_dict(to_hf_state_dict(ours), strict=False)
        assert not unexpected and all("decoder" in k or "position_ids" in k for k in missing), (missing, unexpected)
        theirs.tie_weights()
        peers[f"transformers-{attention}"] = theirs
    return config, ours, peers


def compiled_peer(peers: dict) -> dict:
    """transformers' eager-attention model under torch.compile (inductor), what the Trainer's `torch_compile=True`
    does: a separate copy, so the other peers stay eager. Measured on a 2-core Xeon with AMX it runs the bf16 step
    1.14x faster than eager (631 vs 721 ms, mini), where compiling bertforge makes its step slower (250 vs 234 ms:
    the masked rows' data-dependent shapes break the graph), so it is the strongest peer there."""
    return {"transformers-eager-compiled": torch.compile(copy.deepcopy(peers["transformers-eager"]))}


def bench_preset(args, preset: str) -> dict:
    config, ours, peers = build_models(preset, args.peers)
    if args.peers and args.compiled_peer:
        peers.update(compiled_peer(peers))
    models = {"bertforge": (ours_step, ours.to(args.device))}
    models.update({name: (hf_step, model.to(args.device)) for name, model in peers.items()})
    # Fused AdamW on every side: what `bertforge pretrain` uses (optim.build_adamw) and the Trainer's default
    # (`adamw_torch_fused`), so the peer runs at its strongest setting here too.
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.fused)
                  for name, (_, model) in models.items()}
    seeds = [0] * (args.warmup + args.steps) if args.same_batch else range(args.warmup + args.steps)
    batches = [{k: v.to(args.device) for k, v in make_batch(config, args.batch, args.seq, args.rate, seed).items()}
               for seed in seeds]
    tokens = args.batch * args.seq
    first = {}
    for name, (step, model) in models.items():
        start = time.perf_counter()
        first[name] = step(model, optimizers[name], batches[0])
        if "compiled" in name:  # compiling took this first step; each precision compiles in its first (untimed) step
            print(f"{name}: compiled in {time.perf_counter() - start:.0f} s (not timed)")
    # Each framework's one model serves both precisions: the step's cost does not depend on the weights' values.
    systems = {f"{name} {precision}": (step, model, optimizers[name], precision)
               for name, (step, model) in models.items() for precision in ("fp32", "bf16")}
    skipped = {name: bf16_skip_reason(args.device) for name, system in systems.items() if system[3] == "bf16"}
    runnable = {name: system for name, system in systems.items() if skipped.get(name) is None}
    times: dict[str, list[float]] = {name: [] for name in runnable}
    for step_index, batch in enumerate(batches):
        for name, (step, model, opt, precision) in runnable.items():
            with precision_context(precision, args.device):
                start = time.perf_counter()
                step(model, opt, batch)  # ends reading the loss: the step has finished on a GPU too
                if step_index >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    # Useful work: the last layer finishes only what the heads read (the masked tokens, [CLS] for NSP); the mean
    # over the timed batches.
    flops = statistics.mean(
        encoder_flops(config, [args.seq] * args.batch, training=True, finished=(b["masked"].sum(1) + 1).tolist())
        + mlm_head_flops(config, int(b["masked"].sum()), training=True) for b in batches[args.warmup:])
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n== {preset}: seq {args.seq}, batch {args.batch}, {args.rate:.0%} masked ==")
    print("first-step fp32 loss: " + ", ".join(f"{name} {loss:.5f}" for name, loss in first.items())
          + " (same weights, same first batch)")
    for name in systems:
        if name not in median:
            print(f"{name:>18}: {skipped[name]}")
            continue
        print(f"{name:>18}: {tokens / median[name]:>9,.0f} tokens/s  (median step {median[name] * 1000:.0f} ms)  "
              f"{mfu_text(flops, median[name], systems[name][3], args.device)}")
    ratios = {f"{o} / {t}": median[t] / median[o] for o in median if o.startswith("bertforge")
              for t in median if t.startswith("transformers")}
    peers = [name for name in median if name.startswith("transformers")]
    ours_best = min((name for name in median if name.startswith("bertforge")), key=median.get)
    if peers:
        strongest = min(peers, key=median.get)
        ratios[f"{ours_best} / strongest peer ({strongest})"] = median[strongest] / median[ours_best]
    for label, ratio in ratios.items():
        print(f"  {label}: {ratio:.2f}x")
    return {"preset": preset, "first_loss": first, "skipped": {k: v for k, v in skipped.items() if v},
            "tokens_per_s": {name: tokens / t for name, t in median.items()},
            "median_step_s": median, "ratios": ratios, "train_flops_per_step": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["mini"], choices=list(PRESETS),
                        help="model shapes, e.g. mini base")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.15)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per system")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per system first")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="fused AdamW on both sides (--no-fused: torch's per-tensor loop, as before 2026-12-06)")
    parser.add_argument("--compiled-peer", action=argparse.BooleanOptionalAction, default=True,
                        help="also time transformers under torch.compile (--no-compiled-peer: skip its compile time)")
    parser.add_argument("--same-batch", action="store_true",
                        help="repeat one batch every step (the matmul shapes never change) instead of masking afresh")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-peers: bertforge alone (no transformers model in the process to share its heap)")
    add_allocator_option(parser)
    args = parser.parse_args()
    if args.peers and args.compiled_peer and args.warmup < 1:
        parser.error("--warmup: 1 or more with the compiled peer (its first bf16 step compiles), or --no-compiled-peer")
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_allocator_option(args)
    import transformers

    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print(peak_text(args.device))
    results = [bench_preset(args, preset) for preset in args.presets]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"seq": args.seq, "batch": args.batch, "masking": args.rate, "steps": args.steps,
                       "same_batch": args.same_batch,
                       "threads": torch.get_num_threads(), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
