"""Held-out MLM accuracy at [MASK] of several pre-training runs against tokens seen, in one plot.

    python benchmarks/plot_pretraining_runs.py --runs runs/wiki_local_60 runs/wiki_random_ablation \
        --labels "local heads (budget recipe)" "random attention start" \
        --output docs/results/pretraining_budget_local.png

Tokens, not minutes, on the x axis by default: runs of the same model cost the same per token, so this
compares what each start learns from the same data, whatever else the machine was doing. `--x minutes`
plots the runs' own clocks instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def heldout_curve(run: Path, x: str = "tokens") -> tuple[list[float], list[float]]:
    """(million tokens or minutes, accuracy at [MASK] in %) at every held-out evaluation of a run folder."""
    config = json.loads((run / "config.json").read_text())
    tokens_per_step = config["batch_size"] * config["max_length"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    heldout = [r for r in records if r["split"] == "heldout"]
    along = ([r["minutes"] for r in heldout] if x == "minutes"
             else [r["step"] * tokens_per_step / 1e6 for r in heldout])
    return along, [100 * r["mlm_mask_accuracy"] for r in heldout]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="pretrain run folders")
    parser.add_argument("--labels", nargs="+", help="one per run (default: the folder names)")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--x", choices=("tokens", "minutes"), default="tokens",
                        help="minutes: the runs' own wall-clock (comparable only between runs on one quiet machine)")
    args = parser.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels: {len(labels)} given for {len(args.runs)} runs; give one per run")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 5))
    for run, label in zip(args.runs, labels, strict=True):
        along, accuracy = heldout_curve(run, args.x)
        axis.plot(along, accuracy, "o-", label=label)
    axis.axhline(5.5, color="grey", linestyle=":", label='unigram plateau ("the" everywhere)')
    axis.set(xlabel="training tokens (millions)" if args.x == "tokens" else "training minutes",
             ylabel="held-out MLM accuracy at [MASK] (%)", title=f"held-out MLM accuracy against {args.x}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
