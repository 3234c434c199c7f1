"""Pre-training step throughput: bertforge vs `transformers.BertForPreTraining` (SDPA attention).

Same config (default: the `mini` preset, vocabulary 30,522), same weights, same batch (sequence 128,
batch 32, 15% of tokens masked, NSP labels), one step = forward + backward + AdamW, in one process.
The two models alternate step by step so that a shared, noisy machine slows both alike; the median
step time of each gives tokens/s. The first step's losses are compared to show both compute the same
thing (bertforge projects onto the vocabulary only at the masked positions; transformers everywhere).

    python benchmarks/bench_pretrain.py --threads 2 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from bertforge.checkpoint import to_hf_state_dict
from bertforge.config import BertConfig
from bertforge.heads import BertForPreTraining


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


def ours_step(model, optimizer, b) -> float:
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], masked_positions=b["masked"])
    loss = F.cross_entropy(out.mlm_logits, b["labels"][b["masked"]]) + F.cross_entropy(out.nsp_logits, b["nsp"])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.15)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    config = BertConfig.from_preset(args.preset, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    ours = BertForPreTraining(config).train()
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=config.layer_norm_eps,
        attn_implementation="sdpa",
    )
    theirs = transformers.BertForPreTraining(hf_config).train()
    assert theirs.config._attn_implementation == "sdpa", theirs.config._attn_implementation
    missing, unexpected = theirs.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not unexpected and all("decoder" in k or "position_ids" in k for k in missing), (missing, unexpected)
    theirs.tie_weights()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    batch = make_batch(config, args.batch, args.seq, args.rate)
    tokens = args.batch * args.seq

    first = (ours_step(ours, opt_ours, batch), hf_step(theirs, opt_theirs, batch))
    ours_step(ours, opt_ours, batch), hf_step(theirs, opt_theirs, batch)  # second warm-up step
    times = {"bertforge": [], "transformers": []}
    for _ in range(args.steps):
        for name, step, model, opt in (("bertforge", ours_step, ours, opt_ours),
                                       ("transformers", hf_step, theirs, opt_theirs)):
            start = time.perf_counter()
            step(model, opt, batch)
            times[name].append(time.perf_counter() - start)
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    result = {
        "preset": args.preset, "seq": args.seq, "batch": args.batch, "masking": args.rate,
        "threads": torch.get_num_threads(), "steps": args.steps,
        "first_loss": {"bertforge": first[0], "transformers": first[1]},
        "tokens_per_s": rate, "ratio": rate["bertforge"] / rate["transformers"],
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
    }
    print(f"config: {args.preset}, seq {args.seq}, batch {args.batch}, {args.rate:.0%} masked, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"first-step loss: bertforge {first[0]:.5f}, transformers {first[1]:.5f} (same weights, same batch)")
    for name in ("bertforge", "transformers"):
        print(f"{name:>13}: {rate[name]:>9,.0f} tokens/s  (median step {result['median_step_s'][name] * 1000:.0f} ms)")
    print(f"ratio: {result['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
